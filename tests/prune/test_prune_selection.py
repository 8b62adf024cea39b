import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from compressjax import prune
from compressjax.core.matching import UnusedRuleWarning


class Net(nn.Module):
  """Named layers whose alphabetical order is not the call order."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), name="stem")(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
    x = nn.Conv(4, (3, 3), name="body")(x).reshape(x.shape[0], -1)
    x = nn.Dense(8, name="fc")(x)
    return nn.Dense(3, name="head")(x)


@pytest.fixture(scope="module")
def net():
  model = Net()
  x = jnp.ones((1, 4, 4, 1))
  return model, jax.eval_shape(lambda: model.init(jax.random.key(0), x)), x


def test_candidates_are_kernels_only(net):
  _, variables, _ = net
  assert prune.kernel_paths(variables["params"]) == [
      "body/kernel", "fc/kernel", "head/kernel", "stem/kernel"]


def test_call_order_and_first_last_skip(net):
  model, variables, x = net
  order = prune.call_order(model, variables, x)
  assert order == ["stem/kernel", "body/kernel", "fc/kernel", "head/kernel"]
  assert prune.select(variables["params"], order=order) == ["body/kernel", "fc/kernel"]
  assert len(prune.select(variables["params"], skip_first_last=False)) == 4


def test_rules_first_match_wins_and_unmatched_stay_dense(net):
  _, variables, _ = net
  rules = [prune.Rule("fc", prune=False), prune.Rule("kernel")]
  chosen = prune.select(variables["params"], rules, skip_first_last=False)
  assert chosen == ["body/kernel", "head/kernel", "stem/kernel"]
  assert prune.select(variables["params"], [prune.Rule("body")], skip_first_last=False) == [
      "body/kernel"]


def test_unused_rule_is_warned(net):
  _, variables, _ = net
  with pytest.warns(UnusedRuleWarning, match="convv"), pytest.warns(UserWarning, match="no kernel"):
    prune.magnitude(0.5, layers=[prune.Rule("convv")]).init(variables["params"])


def test_bad_order_is_refused(net):
  _, variables, _ = net
  with pytest.raises(ValueError, match="not kernels"):
    prune.select(variables["params"], order=["bn/scale"])


def test_call_order_accepts_static_keyword_flags():
  from compressjax.models import CNN
  from compressjax.prune import call_order

  model = CNN(widths=(2, 2), hidden=4)
  x = jnp.zeros((1, 8, 8, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  order = call_order(model, variables, x, train=False)
  assert order == ["conv0/kernel", "conv1/kernel", "hidden/kernel", "head/kernel"]


class Custom(nn.Module):
  """A layer whose weight is a param named 'w' read by jnp.einsum (no Dense/Conv)."""

  @nn.compact
  def __call__(self, x):
    w = self.param("w", nn.initializers.normal(1.0), (x.shape[-1], 6))
    return jnp.einsum("bk,kn->bn", x, w)


class Block(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return nn.Dense(x.shape[-1], name="fc")(x), None


class Stacked(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Dense(6, name="stem")(x)
    x = Custom(name="mix")(x)
    x, _ = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                   length=3)(name="layers")(x, None)
    return nn.Dense(2, name="head")(x)


def test_discovered_weights_include_custom_and_scan_stacked_params():
  model, x = Stacked(), jnp.ones((2, 4))
  params = model.init(jax.random.key(0), x)["params"]
  order = prune.call_order(model, None, x)
  assert order == ["stem/kernel", "mix/w", "layers/fc/kernel", "head/kernel"]
  assert prune.select(params, order=order) == ["mix/w", "layers/fc/kernel"]
  rules = [prune.Rule("^head$"), prune.Rule("mix")]
  assert prune.select(params, rules, skip_first_last=False, order=order) == ["mix/w", "head/kernel"]
  # the stacked (L, K, N) kernel is pruned as one tensor; custom 'w' too
  pruned, masks = prune.prune_once(prune.magnitude(0.5, order=order), params)
  for path in (("mix", "w"), ("layers", "fc", "kernel")):
    m = masks[path[0]][path[1]] if len(path) == 2 else masks[path[0]][path[1]][path[2]]
    assert (~m).mean() == pytest.approx(0.5, abs=0.05)
  assert masks["head"]["kernel"] is None and masks["stem"]["kernel"] is None
  assert pruned["layers"]["fc"]["kernel"].shape == (3, 6, 6)
