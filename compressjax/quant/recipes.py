"""Named QAT recipes: which weight and activation quantizers a method uses, and its rules.

``recipe_rules("lsq", sites, w_bits=4, a_bits=4)`` gives the rules most papers use: the first
weight site keeps a float input and 8-bit weights, the last weight site 8-bit weights and
inputs, every other site ``w_bits`` / ``a_bits``. ``sites`` are
:func:`compressjax.core.discover`'s (the edge rules match their exact names, e.g.
``^conv0/kernel$``); ``edge_bits=None`` quantizes every layer, first and last too, at
``w_bits``/``a_bits`` (the network input then through LSQ+, see ``_INPUT``). Activation x
activation sites (attention products) stay float.
Activation quantizers take their sign from calibration (``signed=None``: signed where the init
batch has negatives, e.g. normalised images at the first layer, unsigned after a ReLU), and
their clip levels / steps start from its statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from compressjax.core.rule import Rule, with_edges
from compressjax.quant.dorefa import DoReFa
from compressjax.quant.lsq import LSQ, LSQPlus
from compressjax.quant.pact import PACT
from compressjax.quant.granularity import PER_CHANNEL
from compressjax.quant.sat import SAT
from compressjax.quant.uniform import Uniform

_RECIPES: dict[str, Callable[[int, int], tuple[Any, Any]]] = {
    "dorefa_pact": lambda w, a: (DoReFa(bits=w, kind="weight"), PACT(bits=a, signed=None)),
    "lsq": lambda w, a: (LSQ(bits=w, kind="weight"), LSQ(bits=a, kind="activation")),
    # The modified grid with a mean-free zero point: the paper's collapses at 2-3 bits when
    # every layer is quantized (see compressjax.quant.sat).
    "sat": lambda w, a: (SAT(bits=w, kind="weight", zero_point="mean"),
                         SAT(bits=a, kind="activation", signed=None)),
    # SAT's later "centered" weight grid: no -2^-b mean shift (see experiments/results).
    "sat_centered": lambda w, a: (
        SAT(bits=w, kind="weight", grid="centered"),
        SAT(bits=a, kind="activation", signed=None),
    ),
    # Post-training: per-channel weight ranges, activation ranges calibrated on data.
    "uniform": lambda w, a: (
        Uniform(bits=w, granularity=PER_CHANNEL),
        Uniform(bits=a, signed=None, symmetric=False, calibration="minmax", dynamic=False),
    ),
}
METHODS = tuple(_RECIPES)
# The network input (standardised images) is no ReLU output: with every layer quantized, every
# recipe reads it through LSQ+ (a learned step and offset), whose min/max init keeps the
# background exact. PACT / SAT's clip [0, alpha] (or symmetric [-alpha, alpha]) puts the digits'
# background (-0.81) on code 0 at 2 bits: measured on the digits CNN, W2A2 init accuracy 74.7%
# (dorefa_pact) and 43.7% (sat_centered) with PACT there, 88.0% and 70.2% with LSQ+.
_INPUT = LSQPlus


def recipe(method: str, w_bits: int, a_bits: int) -> tuple[Any, Any]:
  """(weight quantizer, activation quantizer) of ``method`` at the given bit-widths."""
  if method not in _RECIPES:
    raise ValueError(f"unknown quantization method {method!r}; choose one of {', '.join(METHODS)}")
  return _RECIPES[method](w_bits, a_bits)


def recipe_rules(
    method: str, sites: Sequence[Any], *, w_bits: int, a_bits: int, edge_bits: int | None = 8
) -> list[Rule]:
  """Rules for ``method``: ``w_bits``/``a_bits`` inside, ``edge_bits`` at the first/last
  weight site of ``sites`` (discovered sites, named ``module/param``); ``edge_bits=None``:
  every layer at ``w_bits``/``a_bits``, first and last too (the first input through LSQ+)."""
  weight, act = recipe(method, w_bits, a_bits)
  if edge_bits is None:
    first_act = _INPUT(bits=a_bits)
    return with_edges([Rule(pattern=".", weight=weight, act=act)], sites,
                      first=Rule(pattern="", weight=weight, act=first_act),
                      last=Rule(pattern="", weight=weight, act=act))
  edge_weight, edge_act = recipe(method, edge_bits, edge_bits)
  return with_edges(
      [Rule(pattern=".", weight=weight, act=act)],
      sites,
      first=Rule(pattern="", weight=edge_weight),
      last=Rule(pattern="", weight=edge_weight, act=edge_act),
  )
