"""Quantizers (fake-quant for training, integer export) and the QArray storage format.

Each quantizer is a frozen config with pure ``init`` / ``update`` / ``fake`` / ``export``
methods (see :class:`Quantizer`); ``granularity`` says which elements share a scale and
``ste`` holds the straight-through building blocks; ``recipes`` the named (weight, activation)
pairs with first/last-layer rules. Mixed precision is in ``compressjax.mixed``.

May import: ``compressjax.core``, ``compressjax.qarray``, ``compressjax.kernels``.
"""

from compressjax.quant._calibration import require_calibrated
from compressjax.quant.base import Quantizer
from compressjax.quant.dorefa import DoReFa
from compressjax.quant.fixed_point import FixedPoint
from compressjax.quant.granularity import PER_CHANNEL, PER_TENSOR, PER_TOKEN, Granularity, per_group
from compressjax.quant.lsq import LSQ, LSQPlus
from compressjax.quant.pact import PACT
from compressjax.qarray import QArray
from compressjax.quant.sat import SAT
from compressjax.quant.uniform import Uniform

__all__ = [
    "DoReFa",
    "FixedPoint",
    "Granularity",
    "LSQ",
    "LSQPlus",
    "PACT",
    "PER_CHANNEL",
    "PER_TENSOR",
    "PER_TOKEN",
    "QArray",
    "Quantizer",
    "SAT",
    "Uniform",
    "per_group",
    "require_calibrated",
]
from compressjax.quant.recipes import METHODS, recipe, recipe_rules
