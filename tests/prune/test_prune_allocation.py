import numpy as np
import pytest

from compressjax import prune

SHAPES = {"a": (3, 3, 1, 8), "b": (3, 3, 8, 16), "c": (256, 64), "d": (64, 10)}


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_erk_meets_the_global_target_and_keeps_small_layers_denser(target):
  s = prune.erk(target, SHAPES)
  sizes = {p: np.prod(v) for p, v in SHAPES.items()}
  kept = sum((1 - s[p]) * sizes[p] for p in SHAPES)
  assert kept == pytest.approx((1 - target) * sum(sizes.values()))
  assert all(0.0 <= v < 1.0 for v in s.values())
  assert s["c"] > s["d"]  # the big dense layer is the sparsest
  assert s["a"] <= s["b"]


def test_erk_keeps_layers_dense_whose_density_would_exceed_one():
  s = prune.erk(0.5, {**SHAPES, "tiny": (2, 2)})
  assert s["tiny"] == 0.0 and s["c"] > 0.5


def test_uniform_gives_every_layer_the_target():
  assert prune.uniform(0.7, SHAPES) == {p: 0.7 for p in SHAPES}


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval_is_refused(bad):
  with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
    prune.erk(bad, SHAPES)
  with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
    prune.magnitude(bad)
