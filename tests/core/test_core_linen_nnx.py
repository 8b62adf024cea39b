"""The same rules on the Linen CNN and its NNX twin train to the same loss curve."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import compressjax as cj
from compressjax.core import Rule
from compressjax.models import CNN, nnx_zoo
from compressjax.quant import LSQ, PER_CHANNEL, Uniform

RULES = [Rule(pattern=".", weight=LSQ(bits=4, granularity=PER_CHANNEL),
              act=LSQ(bits=4, kind="activation", signed=True))]
STEPS = 20


def _data():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((16, 8, 8, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 16))
  return x, y


def _loss(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_linen_and_nnx_cnn_loss_curves_match():
  x, y = _data()
  linen = CNN(widths=(4, 8), hidden=16)
  float_vars = linen.init(jax.random.key(0), x)
  model = cj.compress(linen, RULES)
  variables = cj.init_from(model, float_vars, x, train=False)
  opt = optax.sgd(0.05)

  @jax.jit
  def linen_step(variables, opt_state):
    def loss(params):
      logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                    mutable=["batch_stats"])
      return _loss(logits, y), updates

    (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    step, opt_state = opt.update(grads, opt_state)
    params = optax.apply_updates(variables["params"], step)
    return {**variables, **updates, "params": params}, opt_state, value

  opt_state = opt.init(variables["params"])
  linen_losses = []
  for _ in range(STEPS):
    variables, opt_state, value = linen_step(variables, opt_state)
    linen_losses.append(float(value))

  twin = nnx_zoo.CNN(widths=(4, 8), hidden=16, rngs=nnx.Rngs(0))
  nnx_zoo.load_linen(twin, float_vars)
  twin.eval()  # init from float in eval mode, as init_from(train=False)
  cm = cj.compress(twin, RULES, x)
  cm.train()
  optimizer = nnx.Optimizer(cm, opt, wrt=nnx.Param)

  @nnx.jit
  def nnx_step(cm, optimizer):
    value, grads = nnx.value_and_grad(lambda m: _loss(m(x), y))(cm)
    optimizer.update(cm, grads)
    return value

  nnx_losses = [float(nnx_step(cm, optimizer)) for _ in range(STEPS)]
  assert linen_losses[-1] < linen_losses[0]
  np.testing.assert_allclose(nnx_losses, linen_losses, atol=1e-5, rtol=1e-5)


def test_linen_and_nnx_calibrate_alike_and_keep_the_weights():
  # Static (calibrated) weight and input ranges: calibrate updates the statistics of both
  # twins alike; compress (NNX) and calibrate keep the parameter arrays themselves, not copies.
  x, _ = _data()
  batches = [x[:8], x[8:]]
  rules = [Rule(pattern=".", weight=Uniform(bits=4, dynamic=False, granularity=PER_CHANNEL),
                act=Uniform(bits=8, dynamic=False, symmetric=False, calibration="minmax"))]
  linen = CNN(widths=(4, 8), hidden=16)
  float_vars = linen.init(jax.random.key(0), x)
  model = cj.compress(linen, rules)
  variables = cj.init_from(model, float_vars, x[:2], train=False)
  calibrated = cj.calibrate(model, variables, batches, train=False)
  assert all(a is b for a, b in zip(jax.tree.leaves(calibrated["params"]),
                                    jax.tree.leaves(variables["params"])))
  before, after = (jax.tree.leaves(v[cj.core.STATS]) for v in (variables, calibrated))
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))  # x[:2] -> all of x

  twin = nnx_zoo.CNN(widths=(4, 8), hidden=16, rngs=nnx.Rngs(0))
  nnx_zoo.load_linen(twin, float_vars)
  twin.eval()
  float_weights = jax.tree.leaves(nnx.state(twin, nnx.Param))
  cm = cj.compress(twin, rules, x[:2])
  assert all(a is b for a, b in zip(jax.tree.leaves(nnx.state(twin, nnx.Param)), float_weights))
  weights = jax.tree.leaves(nnx.state(cm, nnx.Param))
  assert cj.calibrate(cm, None, batches) is cm
  assert all(a is b for a, b in zip(jax.tree.leaves(nnx.state(cm, nnx.Param)), weights))
  values = lambda leaves: np.sort(np.concatenate([np.ravel(a) for a in leaves]))
  np.testing.assert_allclose(values(jax.tree.leaves(nnx.state(cm, cj.core.QuantStat))),
                             values(after), rtol=1e-6, atol=1e-6)


def test_param_labels_mark_the_same_quantizer_params_in_linen_and_nnx():
  x, _ = _data()
  linen = cj.compress(CNN(widths=(4, 8), hidden=16), RULES)
  params = jax.eval_shape(linen.init, jax.random.key(0), x)["params"]
  twin = cj.compress(nnx_zoo.CNN(widths=(4, 8), hidden=16, rngs=nnx.Rngs(0)), RULES, x)

  def quantizer_paths(labels, prefix):
    return sorted(p.split("/", 1)[1] for p, label in cj.core.tree_paths.flat_paths(labels)
                  if label == "quantizer" and p.startswith(prefix))

  quantized = quantizer_paths(cj.param_labels(params), "compressjax/")
  assert quantized and all(p.endswith("/step") for p in quantized)
  nnx_labels = cj.param_labels(nnx.state(twin, nnx.Param))
  assert quantizer_paths(nnx_labels, "site_params/") == quantized
  assert set(jax.tree.leaves(nnx_labels)) == {"quantizer", "model"}


def test_size_report_of_the_served_linen_cnn_and_its_nnx_twin_agree():
  x, _ = _data()
  rules = [Rule(pattern=".", weight=LSQ(bits=4, granularity=PER_CHANNEL))]
  linen = cj.compress(CNN(widths=(4, 8), hidden=16), rules)
  _, served = cj.export(linen, linen.init(jax.random.key(0), x), x)
  twin = cj.compress(nnx_zoo.CNN(widths=(4, 8), hidden=16, rngs=nnx.Rngs(0)), rules, x)
  twin.eval()
  a, b = cj.size_report(served), cj.size_report(cj.export(twin))
  assert (a.total_bytes, a.qarray_bytes, a.float_bytes) == (b.total_bytes, b.qarray_bytes,
                                                            b.float_bytes)
  float_bytes = sum(np.size(l) * 4 for l in jax.tree.leaves(
      CNN(widths=(4, 8), hidden=16).init(jax.random.key(0), x)["params"]))
  assert a.qarray_bytes > 0 and a.total_bytes < 0.25 * float_bytes
