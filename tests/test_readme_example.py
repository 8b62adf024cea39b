"""The README's example, as a new user would run it: an arbitrary Linen model to served int4."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import compressjax as cj


class MyNet(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Dense(64, name="body")(x.reshape(len(x), -1)))
    return nn.Dense(10, name="head")(x)


def test_readme_example_quantizes_and_serves_an_unknown_model():
  x = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
  q4 = cj.quant.LSQ(bits=4)
  model = cj.compress(MyNet(), [cj.Rule(pattern="^head$"), cj.Rule(pattern=".", weight=q4)])
  variables = model.init(jax.random.key(0), x)
  serving_model, serving_vars = cj.export(model, variables)
  logits = jax.jit(serving_model.apply)(serving_vars, x)
  np.testing.assert_allclose(logits, model.apply(variables, x), rtol=1e-5, atol=1e-5)
  assert isinstance(serving_vars["params"]["body"]["kernel"], cj.QArray)
  assert serving_vars["params"]["body"]["kernel"].packed.dtype == jnp.uint8
  assert cj.size_report(serving_vars).total_bytes < 0.3 * cj.size_report(variables).total_bytes
