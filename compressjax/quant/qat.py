"""Quantize a trained zoo classifier: QAT (fine-tune from the float run) or PTQ (calibrate only).

Both start from a float run's workdir (``compressjax train``), build the rules of a named
recipe (:mod:`compressjax.quant.recipes`), initialise quantizer state from the float weights
and a batch of training images, and finish by exporting to packed integers and evaluating the
**served** model, so the reported accuracy is that of what would be deployed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np

from compressjax.config import Config
from compressjax.core import calibrate, compress, discover, init_from
from compressjax.data import batches, get_augment
from compressjax.export import export, size_report
from compressjax.quant.recipes import recipe_rules
from compressjax.train import (TrainState, evaluate, fit, make_eval_step, make_train_step,
                               restore_variables, setup)

INIT_EXAMPLES = 256


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """Which recipe and bit-widths; ``edge_bits`` for the first and last site."""

  method: str = "lsq"
  w_bits: int = 4
  a_bits: int = 4
  edge_bits: int = 8


def quantize_classifier(cfg: Config, float_workdir: str, workdir: str, spec: QuantSpec, *,
                        train: bool = True, calibration_batches: int = 4) -> dict[str, Any]:
  """QAT (``train=True``, fine-tunes for ``cfg.train`` epochs) or PTQ of a float run.

  Returns a summary: float, fake-quant and served test accuracy, bytes before and after.
  """
  t0 = time.time()
  s = setup(cfg)
  float_vars = restore_variables(os.path.abspath(float_workdir))
  examples, _ = s.dataset.train.take(np.arange(min(INIT_EXAMPLES, len(s.dataset.train))))
  rules = recipe_rules(spec.method, discover(s.model, examples), w_bits=spec.w_bits,
                       a_bits=spec.a_bits, edge_bits=spec.edge_bits)
  qmodel = compress(s.model, rules)
  variables = init_from(qmodel, float_vars, examples, train=False)
  if train:
    state = _state(variables, s.optimizer, cfg.train.seed)
    augment = s.dataset.augment if cfg.data.augment == "default" else get_augment(cfg.data.augment)
    result = fit(state, make_train_step(qmodel, s.optimizer), s.dataset.train, cfg.train,
                 workdir=os.path.abspath(workdir), eval_step=make_eval_step(qmodel),
                 eval_data=s.dataset.test, augment=augment)
    variables = result.state.variables
  else:
    calib = (b["image"] for _, b in zip(range(calibration_batches),
                                        batches(s.dataset.train, cfg.train.batch_size,
                                                seed=cfg.train.seed, epoch=0)))
    variables = calibrate(qmodel, variables, calib, train=False)
  serving_model, serving_vars = export(qmodel, variables)

  def accuracy(model, variables):
    state = _state(variables, s.optimizer, cfg.train.seed)
    return evaluate(make_eval_step(model), state, s.dataset.test, cfg.train.batch_size)["accuracy"]

  return {
      "method": spec.method, "w_bits": spec.w_bits, "a_bits": spec.a_bits,
      "edge_bits": spec.edge_bits, "mode": "qat" if train else "ptq",
      "float_accuracy": accuracy(s.model, float_vars),
      "fake_quant_accuracy": accuracy(qmodel, variables),
      "served_accuracy": accuracy(serving_model, serving_vars),
      "float_bytes": size_report(float_vars).total_bytes,
      "quantized_bytes": size_report(serving_vars).total_bytes,
      "time_s": round(time.time() - t0, 2),
  }


def _state(variables: dict, optimizer, seed: int) -> TrainState:
  variables = dict(variables)
  params = variables.pop("params")
  return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                    model_state=variables, opt_state=optimizer.init(params),
                    rng=jax.random.PRNGKey(seed))
