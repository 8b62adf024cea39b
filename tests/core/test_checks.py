"""The non-finite policy at step time (``checks=True``) and at export (transform state)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import compressjax as cj
from compressjax.core import Rule
from compressjax.core.checks import checked
from compressjax.core.compress import SITE_PARAMS
from compressjax.quant import LSQ, PACT


class TwoDense(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name="out")(nn.relu(nn.Dense(4, name="inner")(x)))


RULES = [Rule(pattern=".", weight=LSQ(bits=4), act=PACT(bits=4, signed=None))]


def _setup(checks=True):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 5)), jnp.float32)
  model = cj.compress(TwoDense(), RULES, checks=checks)
  return model, cj.init_from(model, TwoDense().init(jax.random.key(0), x), x), x


def _with(variables, path, value):
  params = jax.tree_util.tree_map(lambda a: a, variables["params"])
  node = params
  for key in path[:-1]:
    node = node[key]
  node[path[-1]] = jnp.full_like(node[path[-1]], value)
  return {**variables, "params": params}


def test_checks_pass_on_finite_state_and_find_a_nan_weight_naming_the_site():
  model, variables, x = _setup()
  step = checked(lambda v, x: model.apply(v, x))
  np.testing.assert_allclose(step(variables, x), model.apply(variables, x))
  with pytest.raises(Exception, match="site 'out/kernel': the weight has NaN/Inf"):
    step(_with(variables, ("out", "kernel"), jnp.nan), x)


def test_checks_find_an_inf_step_or_clip_level_naming_the_site():
  model, variables, x = _setup()
  step = checked(lambda v, x: model.apply(v, x))
  with pytest.raises(Exception, match=r"site 'inner/kernel': weight transform parameter 'step'"):
    step(_with(variables, (SITE_PARAMS, "inner", "kernel", "weight", "step"), jnp.inf), x)
  with pytest.raises(Exception, match=r"site 'out/kernel': input transform parameter 'alpha'"):
    step(_with(variables, (SITE_PARAMS, "out", "kernel", "input", "alpha"), jnp.nan), x)


def test_checks_off_by_default_and_must_be_bool():
  model, variables, x = _setup(checks=False)
  assert not model.compression.checks
  jax.jit(lambda v, x: model.apply(v, x))(variables, x)  # no checkify needed
  with pytest.raises(TypeError, match="checks='yes'"):
    cj.compress(TwoDense(), RULES, checks="yes")


def test_nnx_checks_name_the_site():
  x = jnp.ones((2, 5))
  net = nnx.Linear(5, 3, rngs=nnx.Rngs(0))
  compressed = cj.compress(net, RULES, x, checks=True)
  compressed.model.kernel.set_value(jnp.full((5, 3), jnp.nan))
  compressed.eval()  # a pure call: no statistics written from inside the checkified trace
  with pytest.raises(Exception, match="the weight has NaN/Inf"):
    checked(lambda m, x: m(x))(compressed, x)


def test_export_refuses_non_finite_activation_state_naming_the_site():
  model, variables, x = _setup(checks=False)
  bad = _with(variables, (SITE_PARAMS, "out", "kernel", "input", "alpha"), jnp.inf)
  with pytest.raises(ValueError, match=r"export of site 'out/kernel': its input transform state "
                                       r"'params/alpha' = \[inf\] is not finite"):
    cj.export(model, bad, x)
