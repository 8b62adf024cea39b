"""Quantize a trained zoo classifier: QAT (fine-tune from the float run) or PTQ (calibrate only).

The config's ``quant`` section names the recipe and the float run (``quant.init_from``);
:func:`~compressjax.runs.classifier.setup` builds the quantized model and its state from the
float weights (:mod:`compressjax.train.quantized`). Both modes finish by exporting to packed
integers and evaluating the **served** model, so the reported accuracy is that of what would
be deployed.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax

from compressjax.config import Config
from compressjax.core import calibrate
from compressjax.data import get_augment
from compressjax.export import export, size_report
from compressjax.models import get_model
from compressjax.runs.classifier import setup
from compressjax.train import (batches, evaluate, fit, make_eval_step, make_train_step,
                               restore_variables, state_from_variables)
from compressjax.train.quantized import check_init, init_examples, variables_like


def quantize_classifier(cfg: Config, workdir: str, *, train: bool = True,
                        calibration_batches: int = 4) -> dict[str, Any]:
  """QAT (``train=True``, fine-tunes for ``cfg.train`` epochs) or PTQ of ``cfg.quant.init_from``.

  Returns a summary: float, fake-quant and served test accuracy, bytes before and after, and the
  top-1 agreement with float right after init-from-float on the init images (a
  :class:`~compressjax.core.fidelity.FidelityWarning` says when it is below 90%).
  """
  q = cfg.quant
  if q.method is None or q.init_from is None:
    raise ValueError(f"quantize_classifier: quant.method={q.method!r}, quant.init_from="
                     f"{q.init_from!r}; set both (a recipe name and a float run's workdir)")
  t0 = time.time()
  s = setup(cfg)
  float_model = get_model(cfg.model.name, s.dataset.num_classes, **cfg.model.kwargs)
  examples = init_examples(s.dataset.train)
  like = variables_like(float_model, examples)
  float_vars = restore_variables(os.path.abspath(q.init_from), like)
  variables = s.state.variables
  init = check_init(float_model, float_vars, s.model, variables, examples,
                    what=f"quantize {q.method} W{q.w_bits}A{q.a_bits}")
  if train:
    augment = s.dataset.augment if cfg.data.augment == "default" else get_augment(cfg.data.augment)
    result = fit(s.state, make_train_step(s.model, s.optimizer), s.dataset.train, cfg.train,
                 workdir=os.path.abspath(workdir), eval_step=make_eval_step(s.model),
                 eval_data=s.dataset.test, augment=augment)
    variables = result.state.variables
  else:
    calib = (b["image"] for _, b in zip(range(calibration_batches),
                                        batches(s.dataset.train, cfg.train.batch_size,
                                                seed=cfg.train.seed, epoch=0)))
    variables = calibrate(s.model, variables, calib, train=False)
  serving_model, serving_vars = export(s.model, variables, examples[:1], train=False)

  def accuracy(model, variables):
    state = state_from_variables(variables, s.optimizer, jax.random.PRNGKey(cfg.train.seed))
    return evaluate(make_eval_step(model), state, s.dataset.test, cfg.train.batch_size)["accuracy"]

  return {
      "method": q.method, "w_bits": q.w_bits, "a_bits": q.a_bits, "edge_bits": q.edge_bits,
      "mode": "qat" if train else "ptq",
      "init_top1_agreement": init["top1_agreement"],
      "float_accuracy": accuracy(float_model, float_vars),
      "fake_quant_accuracy": accuracy(s.model, variables),
      "served_accuracy": accuracy(serving_model, serving_vars),
      "float_bytes": size_report(float_vars).total_bytes,
      "quantized_bytes": size_report(serving_vars).total_bytes,
      "time_s": round(time.time() - t0, 2),
  }
