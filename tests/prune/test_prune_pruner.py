import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from compressjax import prune
from compressjax.core.matching import UnusedRuleWarning


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return {
      "conv": {"kernel": normal(3, 3, 4, 8), "bias": jnp.ones(8)},
      "fc1": {"kernel": normal(32, 16)},
      "fc2": {"kernel": 0.01 * normal(16, 8)},
      "bn": {"scale": jnp.ones(8), "bias": jnp.zeros(8)},
  }


def run(tx, params, steps, seed=0):
  """``steps`` updates with random gradients (drawn by numpy: threefry is slow to compile)."""
  state = tx.init(params)
  rng = np.random.default_rng(seed)

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  for _ in range(steps):
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    params, state = step(params, state, grads)
  return params, state


@pytest.mark.parametrize("optimizer", [
    optax.adamw(1e-2, weight_decay=0.1),
    optax.sgd(0.05, momentum=0.9),
], ids=["adamw_wd", "sgd_momentum"])
def test_masked_weights_stay_exactly_zero_through_many_steps(optimizer):
  params = make_params()
  tx = optax.chain(optimizer, prune.magnitude(0.75, prune.polynomial(0, 30, 10),
                                              skip_first_last=False))
  params, state = run(tx, params, 50)
  masks = prune.get_masks(state)
  for path in ("conv", "fc1", "fc2"):
    w, m = np.asarray(params[path]["kernel"]), np.asarray(masks[path]["kernel"])
    assert np.all(w[~m] == 0.0)
    assert np.all(w[m] != 0.0)
    assert (~m).mean() == pytest.approx(0.75, abs=1e-3)
  assert masks["conv"]["bias"] is None and masks["bn"]["scale"] is None
  assert np.all(np.asarray(params["bn"]["scale"]) != 1.0)  # unpruned leaves still train


def test_unmasked_updates_equal_the_optimizer_updates_exactly():
  params = make_params()
  grads = jax.tree.map(jnp.ones_like, params)
  base = optax.adamw(1e-2, weight_decay=0.1)
  tx = optax.chain(base, prune.magnitude(0.5, skip_first_last=False))
  u_base, _ = jax.jit(base.update)(grads, base.init(params), params)
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for a, b, p in zip(jax.tree.leaves(u), jax.tree.leaves(u_base), jax.tree.leaves(params)):
    new = np.asarray(optax.apply_updates(p, a))
    keep = new != 0
    np.testing.assert_array_equal(np.asarray(a)[keep], np.asarray(b)[keep])


def test_gradual_sparsity_follows_the_schedule():
  params = make_params()
  sched = prune.polynomial(0, 30, frequency=10)
  tx = optax.chain(optax.sgd(1e-3), prune.magnitude(0.8, sched, skip_first_last=False))
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  update = jax.jit(tx.update)
  for t in range(31):
    u, state = update(zeros, state, params)
    params = optax.apply_updates(params, u)
    if t % 10 == 0:
      sparsity = 1 - np.asarray(prune.get_masks(state)["fc1"]["kernel"]).mean()
      expected = 0.8 * (1 - (1 - t / 30) ** 3)
      assert sparsity == pytest.approx(expected, abs=1 / 512)


def test_global_threshold_prunes_the_small_layer_harder_than_per_layer():
  params = make_params()
  _, per_layer = prune.prune_once(prune.magnitude(0.5, skip_first_last=False), params)
  _, glob = prune.prune_once(prune.magnitude(0.5, scope="global", skip_first_last=False), params)
  sparsity = lambda m, p: 1 - np.asarray(m[p]["kernel"]).mean()
  for p in ("conv", "fc1", "fc2"):
    assert sparsity(per_layer, p) == pytest.approx(0.5)
  assert sparsity(glob, "fc2") == 1.0  # weights 100x smaller than the others
  assert sparsity(glob, "conv") < 0.5 and sparsity(glob, "fc1") < 0.5
  total = sum(np.asarray(glob[p]["kernel"]).size for p in ("conv", "fc1", "fc2"))
  kept = sum(np.asarray(glob[p]["kernel"]).sum() for p in ("conv", "fc1", "fc2"))
  assert 1 - kept / total == pytest.approx(0.5, abs=1 / total)


def test_magnitude_keeps_the_largest_weights():
  params = make_params()
  pruned, masks = prune.prune_once(prune.magnitude(0.6, skip_first_last=False), params)
  w, m = np.abs(np.asarray(params["fc1"]["kernel"])), np.asarray(masks["fc1"]["kernel"])
  assert w[m].min() >= w[~m].max()
  assert np.all(np.asarray(pruned["fc1"]["kernel"])[~m] == 0)


def test_random_pruning_is_reproducible_from_its_key():
  params = make_params()
  tx = prune.random(0.5, jax.random.key(1), skip_first_last=False)
  update, state = jax.jit(tx.update), tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  mask = lambda s: prune.get_masks(update(zeros, s, params)[1])["fc1"]["kernel"]
  m1, m2 = mask(state), mask(tx.init(params))
  m3 = mask(state._replace(key=jax.random.key(2)))
  np.testing.assert_array_equal(m1, m2)
  assert np.any(np.asarray(m1) != np.asarray(m3))
  assert np.asarray(m1).mean() == pytest.approx(0.5)


def test_saliency_uses_the_gradient():
  params = {"a": {"kernel": jnp.ones((1, 4))}, "b": {"kernel": jnp.ones((4, 4))},
            "c": {"kernel": jnp.ones((4, 1))}}
  grads = jax.tree.map(jnp.zeros_like, params)
  grads["b"]["kernel"] = jnp.arange(16.0).reshape(4, 4)
  order = ["a/kernel", "b/kernel", "c/kernel"]
  _, masks = prune.prune_once(prune.saliency(0.25, order=order), params, grads)
  expected = np.arange(16).reshape(4, 4) >= 4
  np.testing.assert_array_equal(masks["b"]["kernel"], expected)
  assert masks["a"]["kernel"] is None and masks["c"]["kernel"] is None  # first/last skipped


def test_block_masks_are_whole_blocks():
  params = make_params()
  _, masks = prune.prune_once(prune.block(0.5, (4, 2), skip_first_last=False), params)
  m = np.asarray(masks["fc1"]["kernel"]).reshape(8, 4, 8, 2)
  per_block = m.all(axis=(1, 3))
  np.testing.assert_array_equal(per_block, m.any(axis=(1, 3)))
  assert per_block.mean() == pytest.approx(0.5)
  with pytest.raises(ValueError, match="conv/kernel with shape"):
    prune.block(0.5, (3, 1), skip_first_last=False).init(params)


def test_report_counts_and_bytes():
  params = make_params()
  pruned, masks = prune.prune_once(prune.magnitude(0.75, skip_first_last=False), params)
  report = prune.sparsity_report(pruned, masks)
  assert set(report["layers"]) == {"conv/kernel", "fc1/kernel", "fc2/kernel"}
  fc1 = report["layers"]["fc1/kernel"]
  assert (fc1["total"], fc1["nonzero"], fc1["dense_bytes"]) == (512, 128, 2048)
  assert fc1["compressed_bytes"] == 128 * 4 + 512 // 8
  assert report["pruned"]["sparsity"] == pytest.approx(0.75, abs=1e-3)
  assert report["total"]["total"] == sum(x.size for x in jax.tree.leaves(params))
  assert "fc1/kernel" in prune.format_report(report)


def test_apply_masks_and_get_masks_errors():
  params = make_params()
  pruned, masks = prune.prune_once(prune.magnitude(0.5, skip_first_last=False), params)
  again = prune.apply_masks(pruned, masks)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(pruned)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="exactly one pruner"):
    prune.get_masks(optax.adam(1e-3).init(params))
  with pytest.raises(ValueError, match="needs the parameters"):
    tx = prune.magnitude(0.5, skip_first_last=False)
    tx.update(params, tx.init(params))


@pytest.mark.parametrize("kwargs, msg", [
    (dict(sparsity=0.5, scope="net"), "scope"),
    (dict(sparsity=0.5, allocation="lamp"), "allocation"),
    (dict(sparsity=0.5, scope="global", allocation="erk"), "uniform"),
])
def test_bad_options_are_refused(kwargs, msg):
  with pytest.raises(ValueError, match=msg):
    prune.magnitude(**kwargs)


def test_first_last_by_name_order_and_empty_selection_are_warned():
  params = make_params()
  with pytest.warns(UserWarning, match="'conv/kernel' and 'fc2/kernel' dense"):
    prune.magnitude(0.5).init(params)
  with pytest.warns(UnusedRuleWarning), pytest.warns(UserWarning, match="selected no kernel"):
    prune.magnitude(0.5, layers=[prune.Rule("conv")]).init(params)  # conv is first: skipped


def test_erk_pruner_follows_the_erk_allocation():
  params = make_params()
  _, masks = prune.prune_once(prune.magnitude(0.8, allocation="erk", skip_first_last=False),
                              params)
  shapes = {p: params[p]["kernel"].shape for p in ("conv", "fc1", "fc2")}
  expected = prune.erk(0.8, shapes)
  for p, n in shapes.items():
    m = np.asarray(masks[p]["kernel"])
    assert 1 - m.mean() == pytest.approx(expected[p], abs=0.5 / m.size)


def test_nnx_optimizer_prunes_a_compressed_model_by_its_rule_names_and_serves():
  """An ``nnx.Optimizer`` over a compressed NNX model: the pruner names the model's kernels as
  its sites do (``conv1/kernel``, not ``model/conv1/kernel``; NNX ``Variable`` values named by
  their parameter), follows ``call_order``, leaves transform state alone, and the exported
  model keeps the zeros (``keep_zeros``) and serves as fake-quant."""
  import compressjax as cj  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from compressjax.models import nnx_zoo  # pylint: disable=g-import-not-at-top
  from compressjax.quant import LSQ, PER_CHANNEL  # pylint: disable=g-import-not-at-top

  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
  y = jnp.arange(16) % 10
  model = nnx_zoo.CNN(widths=(4, 8), hidden=16, num_classes=10, rngs=nnx.Rngs(0))
  w4 = cj.core.keep_zeros(LSQ(bits=4, granularity=PER_CHANNEL))
  cm = cj.compress(model, [cj.Rule(pattern=".", weight=w4)], x)
  order = prune.call_order(cm, None, x)
  assert order == ["conv0/kernel", "conv1/kernel", "hidden/kernel", "head/kernel"]
  tx = optax.chain(optax.adam(1e-2),
                   prune.magnitude(0.5, prune.one_shot(0), order=order,
                                   layers=[prune.Rule("hidden|conv1")]))
  opt = nnx.Optimizer(cm, tx, wrt=nnx.Param)
  cm.train()

  @nnx.jit
  def step(m, opt):
    grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean())(m)
    opt.update(m, grads)

  for _ in range(3):
    step(cm, opt)
  zeros = {k: float(jnp.mean(getattr(model, k).kernel.get_value() == 0))
           for k in ("conv0", "conv1", "hidden", "head")}
  assert zeros == {"conv0": 0.0, "conv1": 0.5, "hidden": 0.5, "head": 0.0}
  masks = prune.get_masks(opt.opt_state)
  assert masks["site_params"]["conv1"]["kernel"]["weight"]["step"].get_value() is None
  cm.eval()
  served = cj.export(cm)
  weight = np.asarray(served.served["hidden"]["kernel"]["weight"].get_value().dequantize())
  assert np.all(weight[np.asarray(model.hidden.kernel.get_value()) == 0] == 0)
  np.testing.assert_allclose(served(x), cm(x), rtol=1e-5, atol=1e-5)


def test_nnx_pruner_on_a_custom_einsum_layer_and_a_scanned_stack():
  """Out of the zoo: a custom ``w`` read by ``jnp.einsum`` and an ``nnx.scan`` stack of 3 Linear
  layers (one stacked kernel) are candidates under their site names, pruned to 50%, and serve."""
  import compressjax as cj  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from compressjax.quant import LSQ  # pylint: disable=g-import-not-at-top

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.w = nnx.Param(jax.random.normal(rngs.params(), (4, 8)))

      @nnx.split_rngs(splits=3)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def make(rngs):
        return nnx.Linear(8, 8, rngs=rngs)

      self.layers = make(rngs)

    def __call__(self, x):
      body = nnx.scan(lambda layer, x: jnp.tanh(layer(x)), in_axes=(0, nnx.Carry),
                      out_axes=nnx.Carry)
      return body(self.layers, jnp.einsum("bi,io->bo", x, self.w[...]))

  x = jax.random.normal(jax.random.key(0), (6, 4))
  model = Model(nnx.Rngs(0))
  cm = cj.compress(model, [cj.Rule(pattern=".", weight=cj.core.keep_zeros(LSQ(bits=4)))], x)
  order = prune.call_order(cm, None, x)
  assert order == ["w", "layers/kernel"]
  tx = prune.magnitude(0.5, prune.one_shot(0), order=order, skip_first_last=False)
  opt = nnx.Optimizer(cm, optax.chain(optax.sgd(1e-3), tx), wrt=nnx.Param)
  opt.update(cm, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(cm))
  assert float(jnp.mean(model.w.get_value() == 0)) == 0.5
  assert float(jnp.mean(model.layers.kernel.get_value() == 0)) == 0.5
  cm.eval()
  np.testing.assert_allclose(cj.export(cm)(x), cm(x), rtol=1e-5, atol=1e-5)
