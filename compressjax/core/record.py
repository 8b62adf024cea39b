"""A transform that records its operand: how calibration-style methods read a site's inputs."""

from __future__ import annotations

import jax

Array = jax.Array


class RecordInput:
  """Keeps its operand as its init-time statistic (``stats["x"]``) and changes nothing.

  ``compress(model, [Rule(pattern=".", act=RecordInput())])`` then ``init_from`` gives every
  weight site's activation operand, as the op sees it, under ``quant_stats`` (HAWQ's input
  traces, GPTQ's Hessians).
  """

  bits = None

  def init(self, x: Array):
    return {}, {"x": x}

  def update(self, x: Array, params, stats):
    del x, params
    return stats

  def fake(self, x: Array, params, stats):
    del params, stats
    return x
