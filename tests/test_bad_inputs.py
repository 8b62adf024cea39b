"""Bad inputs fail fast with one line naming the key and the value (each case well under 5 s)."""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compressjax as cj
from compressjax.core import Rule
from compressjax.quant import (LSQ, PACT, SAT, DoReFa, FixedPoint, Granularity, LSQPlus, Uniform,
                               per_group)

QUANTIZERS = (PACT, SAT, DoReFa, LSQ, LSQPlus, Uniform, FixedPoint)
KEY = jax.random.PRNGKey(0)


def _one_line_error(fn, error, *needles):
  # CPU time of this process: the bound holds on a machine busy with other jobs too.
  t0 = time.process_time()
  with pytest.raises(error) as info:
    fn()
  message = str(info.value)
  assert time.process_time() - t0 < 5.0
  assert "\n" not in message, message
  for needle in needles:
    assert needle in message, message
  return message


@pytest.mark.parametrize("cls", QUANTIZERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bits", [0, 17, -3, 4.0, True, "8"])
def test_bits_out_of_range(cls, bits):
  _one_line_error(lambda: cls(bits=bits), ValueError, f"bits={bits!r}", cls.__name__)


@pytest.mark.parametrize("cls", (PACT, LSQ, Uniform), ids=lambda c: c.__name__)
def test_signed_must_be_bool_or_none(cls):
  _one_line_error(lambda: cls(signed="yes"), ValueError, "signed='yes'", "True, False or None")


@pytest.mark.parametrize("make", [
    lambda: PACT(bits=4),
    lambda: LSQ(bits=4, kind="activation"),
    lambda: Uniform(bits=8, signed=None),
    lambda: SAT(bits=4, kind="activation"),
    lambda: DoReFa(bits=2, kind="activation"),
])
def test_integer_inputs_are_a_type_error(make):
  q = make()
  x = jnp.arange(12, dtype=jnp.int32).reshape(3, 4)
  _one_line_error(lambda: q.init(x), TypeError, "dtype=int32", "floating-point")
  params, stats = q.init(x.astype(jnp.float32))
  _one_line_error(lambda: q.fake(x, params, stats), TypeError, "dtype=int32")


@pytest.mark.parametrize("shape", [(0, 4), (2, 0), (0,)])
def test_empty_tensors_at_init(shape):
  q = LSQ(bits=4, kind="activation")
  _one_line_error(lambda: q.init(jnp.zeros(shape)), ValueError, f"shape={shape}", "no elements")


def test_bad_group_sizes():
  _one_line_error(lambda: Granularity(kind="group", group_size=0), ValueError, "group_size=0")
  _one_line_error(lambda: Granularity(kind="group", group_size=2.5), ValueError, "group_size=2.5")
  _one_line_error(lambda: Granularity(kind="channel", group_size=4), ValueError, "group_size=4")
  q = LSQ(bits=4, granularity=per_group(3))
  _one_line_error(lambda: q.init(jnp.ones((8, 4))), ValueError, "group_size=3", "K=8")
  model = cj.compress(nn.Dense(4), [Rule(pattern=".", weight=q)])
  _one_line_error(lambda: model.init(KEY, jnp.ones((2, 8))), ValueError, "site 'kernel",
                  "group_size=3")


@pytest.mark.parametrize("pattern", ["(", "[a-", "*x"])
def test_invalid_rule_regex(pattern):
  _one_line_error(lambda: Rule(pattern=pattern), ValueError, repr(pattern), "regular expression")


def _rules():
  return [Rule(pattern=".", weight=LSQ(bits=4), act=LSQ(bits=4, kind="activation"))]


def test_empty_batch_at_init_names_the_site_and_shape():
  model = cj.compress(nn.Dense(3), _rules())
  _one_line_error(lambda: model.init(KEY, jnp.zeros((0, 5))), ValueError, "site 'kernel",
                  "shape=(0, 5)")


def test_batch_size_one_inits_and_empty_batches_apply():
  model = cj.compress(nn.Dense(3), _rules())
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5)), jnp.float32)
  variables = model.init(KEY, x)
  assert int(variables["quant_stats"]["kernel"]["input"]["signed"]) == 1
  apply = jax.jit(model.apply)
  assert np.all(np.isfinite(apply(variables, x)))
  assert apply(variables, jnp.zeros((0, 5))).shape == (0, 3)


def test_quant_edge_bits_is_an_int_or_none_in_overrides():
  from compressjax.config import get_config  # pylint: disable=g-import-not-at-top

  assert get_config("digits_cnn", ["quant.edge_bits=none"]).quant.edge_bits is None
  assert get_config("digits_cnn", ["quant.edge_bits=6"]).quant.edge_bits == 6
  _one_line_error(lambda: get_config("digits_cnn", ["quant.edge_bits=eight"]), ValueError,
                  "quant.edge_bits", "'eight'")
  _one_line_error(lambda: get_config("digits_cnn", ["quant.edge_bits=0"]), ValueError,
                  "quant.edge_bits", "must be > 0")
