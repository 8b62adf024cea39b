"""Rules, sites and the ``compress`` transform over unmodified Flax Linen models."""

from compressjax.core.calibrate import calibrate
from compressjax.core.compress import (
    STATS,
    Compression,
    compress,
    init_from,
    is_compressed,
    param_labels,
    uncompressed,
    with_compression,
)
from compressjax.core.matching import UnusedRuleWarning
from compressjax.core.rule import Rule, with_edges
from compressjax.core.sites import SITE_TYPES, Site, discover
from compressjax.core.transform import Chain, Transform, chain
from compressjax.core.zeros import KeepZeros, keep_zeros
