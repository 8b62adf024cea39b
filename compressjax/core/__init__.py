"""Core: sites (ops found while the model runs, Linen and NNX), rules, transforms, compress.

May import: jax, flax, numpy and ``compressjax.qarray``. Nothing above it (methods, export,
train, applications) is imported here.
"""

from compressjax.core.calibrate import calibrate
from compressjax.core.compress import (SITE_PARAMS, STATS, Compression, compress, init_from,
                                       is_compressed, param_labels, uncompressed,
                                       with_compression)
from compressjax.core.fidelity import FidelityWarning, check_fidelity, fidelity
from compressjax.core.matching import UnusedRuleWarning, matches
from compressjax.core.nnx_compress import CompressedModule, QuantStat
from compressjax.core.record import RecordInput
from compressjax.core.rule import Rule, with_edges
from compressjax.core.sites import Site, discover
from compressjax.core.transform import Chain, Transform, bits_of, chain
from compressjax.core.zeros import KeepZeros, keep_zeros

__all__ = [
    "Chain", "CompressedModule", "Compression", "FidelityWarning", "KeepZeros", "QuantStat",
    "RecordInput", "Rule", "SITE_PARAMS", "STATS", "Site", "Transform", "UnusedRuleWarning",
    "bits_of", "calibrate", "chain", "check_fidelity", "compress", "discover", "fidelity",
    "init_from", "is_compressed", "keep_zeros", "matches", "param_labels", "uncompressed",
    "with_compression", "with_edges",
]
