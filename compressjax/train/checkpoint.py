"""Orbax checkpoints of a run's TrainState plus JSON metadata (data position, run shape).

Layout: ``<workdir>/checkpoints/<step>/{state,meta}``. Restoring into a model whose variables
differ (another architecture, other widths) fails with one line saying the checkpoint is from
another model, naming the first differing path and both shapes, instead of an orbax,
tensorstore or (later, at ``apply``) Flax scope error.

Arrays are saved with their shardings and restored onto the target's (any mesh: a run saved on
8 devices restores on 1); targets without a sharding, and ``restore_variables``, land on the
default device (replicated over every device when there are several processes).
"""

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from compressjax.core.tree_paths import key_name
from compressjax.train.state import TrainState, Variables

CHECKPOINT_SUBDIR = "checkpoints"
_MAX_REPORTED = 4
_REPORT_ORDER = {"params": 0, "model_state": 1}  # then the rest (step, opt_state, rng)


class Checkpoints:
  """A workdir's checkpoints: save every so often, restore the latest (or a given) step."""

  def __init__(self, workdir: str, *, max_to_keep: int | None = 2, create: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)
    if not create and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"no checkpoints in {os.path.abspath(workdir)} "
                              f"(expected {self.directory}); train there first")
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState, meta: dict[str, Any]) -> None:
    """Saves ``state`` and JSON ``meta`` under ``state.step`` (asynchronously)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    self.manager.save(int(state.step), args=args)

  def restore(self, target: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
    """Restores (state, meta) shaped like ``target`` (arrays or ShapeDtypeStructs)."""
    step = self._step(step)
    check_compatible(self._saved_tree(step), target, f"{self.directory}/{step}")
    args = ocp.args.Composite(state=ocp.args.StandardRestore(_placed(target)),
                              meta=ocp.args.JsonRestore())
    restored = self.manager.restore(step, args=args)
    return restored.state, restored.meta

  def restore_variables(self, like: Variables | None = None, step: int | None = None) -> Variables:
    """The model variables ({"params": ..., **model_state}) of a checkpoint.

    ``like``: variables of the intended model (arrays or ShapeDtypeStructs, e.g.
    ``jax.eval_shape(model.init, rng, x)``); a checkpoint of another model then fails here, with
    a message naming the first differing path. Without it nothing is checked (what was saved is
    returned); every library caller passes it.
    """
    step = self._step(step)
    saved = self._saved_tree(step)
    if like is not None:
      target = {"params": like["params"], "model_state": {k: v for k, v in like.items()
                                                          if k != "params"}}
      check_compatible({k: saved[k] for k in target}, target, f"{self.directory}/{step}")
    args = ocp.args.Composite(state=ocp.args.StandardRestore(_placed(saved)))
    state = self.manager.restore(step, args=args).state
    return {"params": state["params"], **state["model_state"]}

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()

  def _step(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None or step not in self.manager.all_steps():
      raise FileNotFoundError(f"no checkpoint {'' if step is None else step} in {self.directory}"
                              f" (available steps: {list(self.manager.all_steps())})")
    return step

  def _saved_tree(self, step: int) -> Any:
    metadata = self.manager.item_metadata(step)["state"]
    return getattr(metadata, "tree", metadata)


def default_sharding() -> jax.sharding.Sharding:
  """The first device, or every device (replicated) when there are several processes."""
  if jax.process_count() == 1:
    return SingleDeviceSharding(jax.devices()[0])
  return NamedSharding(Mesh(np.asarray(jax.devices()), ("devices",)), PartitionSpec())


def _placed(target: Any) -> Any:
  """``target`` (arrays, ShapeDtypeStructs or checkpoint metadata) as ShapeDtypeStructs with a
  sharding each: their own, else ``default_sharding()``."""
  default = default_sharding()

  def place(x: Any) -> jax.ShapeDtypeStruct:
    sharding = getattr(x, "sharding", None)  # metadata has orbax's own, not a jax Sharding
    sharding = sharding if isinstance(sharding, jax.sharding.Sharding) else default
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(place, target)


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def check_compatible(saved: Any, target: Any, where: str) -> None:
  """ValueError "checkpoint ... is from another model" naming the first path whose presence or
  shape differs between the two trees, both shapes, and how many more differ.

  Differences under params come first, then model_state; the optimizer state's (it only
  mirrors params) are reported only when nothing else differs.
  """
  saved_shapes, target_shapes = _leaf_shapes(saved), _leaf_shapes(target)
  order = lambda path: (_REPORT_ORDER.get(path.split("/")[0], len(_REPORT_ORDER)), path)
  problems = []
  for path in sorted(set(saved_shapes) | set(target_shapes), key=order):
    got, want = saved_shapes.get(path), target_shapes.get(path)
    if got != want:
      problems.append(f"{path}: checkpoint {_shape_str(got)} vs model {_shape_str(want)}")
  if not problems:
    return
  problems = [p for p in problems if not p.startswith("opt_state")] or problems
  more = f" (+{len(problems) - _MAX_REPORTED} more)" if len(problems) > _MAX_REPORTED else ""
  raise ValueError(f"checkpoint {where} is from another model: first difference "
                   f"{'; '.join(problems[:_MAX_REPORTED])}{more}")


def _shape_str(shape: tuple[int, ...] | None) -> str:
  return "missing" if shape is None else str(shape)


def load_checkpoint(workdir: str, target: TrainState,
                    step: int | None = None) -> tuple[TrainState, dict]:
  """Restores (TrainState, meta) from ``workdir`` shaped like ``target``."""
  checkpoints = Checkpoints(workdir, create=False)
  try:
    return checkpoints.restore(target, step)
  finally:
    checkpoints.close()


def restore_variables(workdir: str, like: Variables | None = None,
                      step: int | None = None) -> Variables:
  """The model variables saved in ``workdir`` (e.g. a float teacher for compression)."""
  checkpoints = Checkpoints(workdir, create=False)
  try:
    return checkpoints.restore_variables(like, step)
  finally:
    checkpoints.close()
