"""Bad input fails early with messages that name the class, the value and what is allowed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.quant import (
    LSQ,
    PACT,
    PER_TOKEN,
    SAT,
    DoReFa,
    FixedPoint,
    LSQPlus,
    Uniform,
    per_group,
    require_calibrated,
)


@pytest.mark.parametrize(
    "cls,bad,allowed",
    [
        (Uniform, 1, "2..16"),
        (Uniform, 17, "2..16"),
        (DoReFa, 0, "1..16"),
        (PACT, 17, "1..16"),
        (LSQ, 1, "2..16"),
        (LSQPlus, 4.0, "2..16"),
        (SAT, 1, "2..16"),
        (FixedPoint, 4, "8..8"),
    ],
)
def test_bits_outside_the_allowed_range(cls, bad, allowed):
  with pytest.raises(ValueError, match=rf"{cls.__name__}: bits={bad!r} .*{allowed}"):
    cls(bits=bad)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: Uniform(calibration="mse"), "calibration='mse'"),
        (lambda: Uniform(percentile=20.0), "percentile=20.0"),
        (lambda: Uniform(dynamic=False, ema_decay=1.0), "ema_decay=1.0"),
        (lambda: Uniform(dynamic=False, granularity=PER_TOKEN), "needs dynamic=True"),
        (lambda: Uniform(granularity="channel"), "must be a Granularity"),
        (lambda: DoReFa(kind="bias"), "kind='bias'"),
        (lambda: DoReFa(kind="activation", granularity=per_group(4)), "granularity 'group'"),
        (lambda: LSQ(granularity=PER_TOKEN), "granularity 'token'"),
        (lambda: PACT(alpha_init=0.0), "alpha_init=0.0"),
        (lambda: SAT(grid="uniform"), "grid='uniform'"),
        (lambda: SAT(fan_out=0), "fan_out=0"),
        (lambda: FixedPoint(momentum=0.0), "momentum=0.0"),
        (lambda: FixedPoint(granularity=per_group(2)), "granularity 'group'"),
    ],
)
def test_bad_configs_are_refused(make, match):
  with pytest.raises((ValueError, TypeError), match=match):
    make()


@pytest.mark.parametrize("q", [Uniform(granularity=per_group(3)), LSQ(granularity=per_group(3))])
def test_group_size_not_dividing_k(q):
  w = jnp.ones((2, 4, 5))  # K = 8
  with pytest.raises(ValueError, match=r"group_size=3 does not divide K=8 .*\(2, 4, 5\)"):
    q.fake(w, *q.init(w))


@pytest.mark.parametrize(
    "q", [Uniform(dynamic=False), FixedPoint(kind="activation")], ids=lambda q: type(q).__name__
)
def test_uncalibrated_static_quantizer(q):
  x = jnp.linspace(-1.0, 1.0, 16)
  params, stats = q.init(x)
  msg = rf"{type(q).__name__}: static quantizer statistics were never calibrated"
  with pytest.raises(ValueError, match=msg):
    q.fake(x, params, stats)
  with pytest.raises(ValueError, match=msg):
    q.export(x, params, stats)
  with pytest.raises(ValueError, match=msg):
    require_calibrated(stats, type(q).__name__)
  # Under jit the count is abstract: the output is NaN instead of silently wrong numbers.
  assert np.isnan(jax.jit(q.fake)(x, params, stats)).all()
  stats = q.update(x, params, stats)
  require_calibrated(stats, type(q).__name__)
  assert np.isfinite(jax.jit(q.fake)(x, params, stats)).all()


def test_export_of_per_token_ranges_is_refused():
  x = jnp.ones((2, 3))
  with pytest.raises(ValueError, match="token"):
    Uniform(granularity=PER_TOKEN).export(x, {}, {})
