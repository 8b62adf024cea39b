"""Pruning: unstructured, block and N:M sparsity as optax transforms, and channel pruning.

    tx = optax.chain(optax.adamw(1e-3), cj.prune.magnitude(0.9, cj.prune.polynomial(0, 1000)))
    masks = cj.prune.get_masks(opt_state)

Channel pruning (Network Slimming): ``slimming_penalty`` during training, ``slimming_keep`` to
choose channels, ``shrink`` to build the thinner model of the same class (a model class takes
part by registering its channel groups: ``channels.register``; the zoo's are in
``compressjax.models.channels``).

May import: ``compressjax.core``, ``compressjax.qarray``, ``compressjax.kernels``.
"""

from compressjax.prune.allocation import erk, uniform
from compressjax.prune.block_pattern import Block
from compressjax.prune.channels import ChannelGroup, channel_groups
from compressjax.prune.criteria import block, magnitude, nm, random, saliency
from compressjax.prune.nm_export import NMArray, compress_nm, decompress_nm
from compressjax.prune.nm_pattern import NM, nm_mask
from compressjax.prune.pruner import PrunerState, apply_masks, get_masks, prune_once, pruner
from compressjax.prune.ranking import Unstructured
from compressjax.prune.report import format_report, sparsity_report
from compressjax.prune.schedules import OneShot, Polynomial, one_shot, polynomial
from compressjax.prune.selection import Rule, call_order, kernel_paths, select, weight_params
from compressjax.prune.shrink import mask_channels, shrink
from compressjax.prune.slimming import (channel_scores, slimming_keep, slimming_penalty,
                                        slimming_rules)

__all__ = [
    "NM", "Block", "ChannelGroup", "NMArray", "OneShot", "Polynomial", "PrunerState", "Rule",
    "Unstructured", "apply_masks", "block", "call_order", "channel_groups", "channel_scores",
    "compress_nm", "decompress_nm", "erk", "format_report", "get_masks", "kernel_paths",
    "magnitude", "mask_channels", "nm", "nm_mask", "one_shot", "polynomial", "prune_once",
    "pruner", "random", "saliency", "select", "shrink", "slimming_keep", "slimming_penalty",
    "slimming_rules", "sparsity_report", "uniform", "weight_params",
]
