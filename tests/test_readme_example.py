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
  serving_model, serving_vars = cj.export(model, variables, x)  # example inputs fix the trace
  logits = jax.jit(serving_model.apply)(serving_vars, x)
  np.testing.assert_allclose(logits, model.apply(variables, x), rtol=1e-5, atol=1e-5)
  body = serving_vars["served"]["body"]["kernel"]["weight"]
  assert isinstance(body, cj.QArray) and body.packed.dtype == jnp.uint8
  assert "kernel" not in serving_vars["params"]["body"]  # the QArray replaces it
  assert isinstance(serving_vars["params"]["head"]["kernel"], jax.Array)  # kept float
  assert cj.size_report(serving_vars).total_bytes < 0.3 * cj.size_report(variables).total_bytes


def test_new_user_model_to_4_bits_and_50_percent_sparsity_served():
  import optax

  import compressjax.prune as prune
  from compressjax.train import create_train_state, make_train_step

  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((16, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 16).astype(np.int32)}
  q4 = cj.core.keep_zeros(cj.quant.LSQ(bits=4))
  model = cj.compress(MyNet(), [cj.Rule(pattern="^head$"), cj.Rule(pattern=".", weight=q4)])
  tx = optax.chain(optax.adam(1e-2), prune.magnitude(0.5, layers=[prune.Rule("body")],
                                                     skip_first_last=False))
  state = create_train_state(model, tx, batch["image"], jax.random.PRNGKey(0))
  step = make_train_step(model, tx)
  for _ in range(3):
    state, _ = step(state, batch)
  serving_model, serving_vars = cj.export(
      model, state.variables, jax.ShapeDtypeStruct(batch["image"].shape, np.float32))
  served_kernel = np.asarray(serving_vars["served"]["body"]["kernel"]["weight"].dequantize())
  assert abs((served_kernel == 0).mean() - 0.5) < 0.02
  np.testing.assert_allclose(jax.jit(serving_model.apply)(serving_vars, batch["image"]),
                             model.apply(state.variables, batch["image"]), rtol=1e-5, atol=1e-5)


def test_readme_nnx_example_serves_what_it_trains():
  import optax
  from flax import nnx

  class MyNNXNet(nnx.Module):
    def __init__(self, rngs):
      self.w = nnx.Param(jax.random.normal(rngs.params(), (64, 10)) * 0.1)

    def __call__(self, x):
      return jnp.einsum("bi,io->bo", x.reshape(len(x), -1), self.w[...])

  x = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
  q4 = cj.quant.LSQ(bits=4)
  model = cj.compress(MyNNXNet(nnx.Rngs(0)), [cj.Rule(pattern=".", weight=q4)], x)
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
  optimizer.update(model, grads)
  model.eval()
  served = cj.export(model)
  np.testing.assert_allclose(served(x), model(x), rtol=1e-5, atol=1e-5)
  assert isinstance(served.served["w"]["weight"].get_value(), cj.QArray)
