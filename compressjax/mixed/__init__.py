"""Mixed precision: which bit-width each layer gets, searched or allocated under a budget.

Modules (the names ``adabits`` and ``fracbits`` here are the modules; their builders are
``adabits.adabits`` and ``fracbits.fracbits``): ``adabits`` (one model switchable between bit-widths), ``fracbits`` (learnable fractional
bit-widths under a BitOPs or size :class:`Budget`), ``hawq`` (Hessian-trace allocation
baseline), ``interp`` (:class:`ChannelBits`, ``mix``: bit-width interpolation), ``report``
(:class:`BitAllocation`: save, load, turn into rules, tabulate) and ``common`` (recipes, edge
rules, start from float). Their training steps live in ``compressjax.train``
(``adabits_step``, ``fracbits_step``).

May import: ``compressjax.core``, ``compressjax.qarray``, ``compressjax.quant`` and
``compressjax.cost`` (never train, data, models or config).
"""

from compressjax.mixed import adabits, common, fracbits, hawq, interp, report
from compressjax.mixed.adabits import Switchable, SwitchableBN, at_bits, copy_switch
from compressjax.mixed.budget import Budget
from compressjax.mixed.fracbits import FracBits, harden
from compressjax.mixed.hawq import hawq_allocation
from compressjax.mixed.interp import ChannelBits, mix
from compressjax.mixed.report import BitAllocation, rules_from_json

__all__ = [
    "BitAllocation",
    "Budget",
    "ChannelBits",
    "FracBits",
    "Switchable",
    "SwitchableBN",
    "adabits",
    "at_bits",
    "common",
    "copy_switch",
    "fracbits",
    "harden",
    "hawq",
    "hawq_allocation",
    "interp",
    "mix",
    "report",
    "rules_from_json",
]
