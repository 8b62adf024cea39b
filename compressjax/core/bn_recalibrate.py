"""BatchNorm statistics recomputed under the compressed weights at init-from-float.

Weight transforms that change a layer's output scale (DoReFa's [-1, 1] weights, SAT's variance
rule, pruning) leave the float model's running statistics wrong, and an eval-mode model that
normalises with them starts near chance. Init-from-float therefore recomputes every BatchNorm's
statistics on the init batch: the compressed model runs with its BatchNorms in batch-statistics
mode and momentum 0 (the running mean / variance become exactly the batch's, so the eval-mode
model equals the train-mode one on that batch), the rest of the model in the mode the caller
asked for (e.g. ``train=False``: no dropout). Transform state is then re-initialised under the
new statistics and the BatchNorms recomputed once more (:data:`PASSES` rounds), so activation
ranges and normalisation agree.

Default (``recalibrate_bn=None``): only when a rule transforms weights (act-only rules such as
input recorders leave the float model's statistics alone) and the compression has no
interceptors (AdaBits' switchable BatchNorm starts every per-bit copy from the float statistics). Models without BatchNorm are left as
they are (LayerNorm / no normalisation need no statistics; a weight transform that rescales their
outputs is for QAT to absorb). A BatchNorm called with an explicit ``use_running_average=`` in
NNX keeps it (NNX's call argument wins over the attribute).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

PASSES = 2  # (recompute BatchNorm, re-initialise transform state) rounds, BatchNorm last
BATCH_STATS = "batch_stats"


def wanted(option: bool | None, spec: Any) -> bool:
  """Whether init-from-float recalibrates: ``option``, or (None) when a rule of ``spec`` (a
  :class:`~compressjax.core.compress.Compression`) transforms weights and no interceptor manages
  normalisation layers itself (AdaBits' switchable BatchNorm keeps one float copy per bit-width)."""
  if option is not None:
    if not isinstance(option, bool):
      raise TypeError(f"recalibrate_bn={option!r}; expected True, False or None (automatic)")
    return option
  return not spec.interceptors and any(rule.weight is not None for rule in spec.rules)


def alternate(state: Any, recompute: Callable[[Any], Any], initialise: Callable[[Any], Any]):
  """:data:`PASSES` rounds of ``state = recompute(state)`` (the BatchNorm statistics), with
  ``state = initialise(state)`` (the transform state) between rounds, so BatchNorm comes last."""
  for i in range(PASSES):
    state = recompute(state)
    if i + 1 < PASSES:
      state = initialise(state)
  return state


def batch_statistics_bn(next_fun, args, kwargs, context):
  """Linen interceptor: every ``nn.BatchNorm`` normalises with (and stores) the batch's
  statistics, momentum 0, whatever the model's mode."""
  module = context.module
  if not isinstance(module, nn.BatchNorm) or context.method_name != "__call__":
    return next_fun(*args, **kwargs)
  kwargs = {k: v for k, v in kwargs.items() if k != "use_running_average"}
  saved = module.use_running_average, module.momentum
  # The bound module is apply's own throw-away clone; its fields are restored right after.
  object.__setattr__(module, "use_running_average", False)
  object.__setattr__(module, "momentum", 0.0)
  try:
    return next_fun(*args[:1], **kwargs)
  finally:
    object.__setattr__(module, "use_running_average", saved[0])
    object.__setattr__(module, "momentum", saved[1])


def linen_batch_stats(model: nn.Module, variables: dict, args: tuple, kwargs: dict) -> dict:
  """``variables`` with ``batch_stats`` recomputed by compressed ``model`` on ``args``."""
  if BATCH_STATS not in variables:
    return variables
  from compressjax.core.compress import with_compression  # pylint: disable=g-import-not-at-top

  spec = model.compression
  recal = with_compression(model, interceptors=(*spec.interceptors, batch_statistics_bn))
  _, updates = recal.apply(variables, *args, mutable=[BATCH_STATS], **kwargs)
  return {**variables, BATCH_STATS: updates[BATCH_STATS]}


def nnx_batch_statistics_mode(model: Any) -> bool:
  """Sets every ``nnx.BatchNorm`` of ``model`` (a throw-away merged copy) to batch statistics,
  momentum 0; returns whether it has any."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  found = False
  for _, sub in nnx.iter_modules(model):
    if isinstance(sub, nnx.BatchNorm):
      sub.use_running_average = False
      sub.momentum = 0.0
      found = True
  return found
