"""Shardings of a TrainState on a ("data", "fsdp") mesh, all derived from the parameters.

Parameters:

1. the state of a site's transforms lives under ``params["compressjax"][<site name nesting>]``
   (``{"weight": ..., "input": ...}``, see :mod:`compressjax.core.compress`); weight-quantizer
   state (step size, clip level, bit-width) follows the site's parameter ``site.param`` (the
   site name without its ``#i`` suffix, e.g. ``conv1/kernel``): aligned from the right as in
   broadcasting, on each axis where its size equals the kernel's it is sharded like the kernel,
   where it is 1 it is not, so per-channel scales and bit-widths (``(1, 1, 1, C)`` or ``(C,)``)
   live with their channels; a shape that does not broadcast, scalars, and activation
   quantizer state (``"input"``) are replicated;
2. a parameter of at least ``min_size`` elements is sharded over "fsdp" along its largest axis
   divisible by the fsdp size (the last such axis on ties: output channels);
3. everything else is replicated.

Every other leaf (optimizer moments, pruning masks kept in the optimizer state, quantizer and
BatchNorm statistics) is matched to a parameter by path and shape: a leaf whose path ends with
a parameter's path and has its shape is sharded like it; quantizer statistics
(``quant_stats``, nested by site name like the transforms' params) follow their site's kernel
as in rule 1; the rest (step, rng, counters, BatchNorm statistics) is replicated.
Batches are split along their first axis over both mesh axes.
"""

import dataclasses
import math
import re
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from compressjax.core.compress import SITE_PARAMS, STATS
from compressjax.core.tree_paths import key_name
from compressjax.train.mesh import BATCH_AXES, FSDP_AXIS

_OPERANDS = ("weight", "input")
_USE_SUFFIX = re.compile(r"#\d+$")


@dataclasses.dataclass(frozen=True)
class _Owner:
  shape: tuple[int, ...]
  spec: tuple[Any, ...]  # one entry per axis: a mesh axis name or None


def _names(path: Any) -> tuple[str, ...]:
  return tuple(key_name(k) for k in path)


def _site_root(names: tuple[str, ...]) -> int | None:
  """Index of the ``compressjax`` / ``quant_stats`` key in a leaf path (the last), or None."""
  for i in range(len(names) - 1, -1, -1):
    if names[i] in (SITE_PARAMS, STATS):
      return i
  return None


def fsdp_axis(shape: tuple[int, ...], fsdp: int, min_size: int) -> int | None:
  """The axis rule 2 shards (largest divisible by ``fsdp``, last on ties), or None."""
  if fsdp == 1 or math.prod(shape) < min_size:
    return None
  candidates = [a for a, d in enumerate(shape) if d % fsdp == 0]
  return max(candidates, key=lambda a: (shape[a], a)) if candidates else None


class _ParamIndex:
  """Parameter specs by path, for matching the other leaves of a state."""

  def __init__(self, params: Any, fsdp: int, min_size: int):
    self.owners: dict[tuple[str, ...], _Owner] = {}
    leaves = [(_names(p), tuple(x.shape)) for p, x in jax.tree_util.tree_flatten_with_path(
        params)[0]]
    site_state = lambda names: _site_root(names) is not None
    for names, shape in leaves:  # rules 2 and 3 first: quantizer state looks up its kernel
      if not site_state(names):
        axis = fsdp_axis(shape, fsdp, min_size)
        self.owners[names] = _Owner(shape, tuple(FSDP_AXIS if a == axis else None
                                                 for a in range(len(shape))))
    self.lengths = sorted({len(n) for n, _ in leaves}, reverse=True)
    for names, shape in leaves:
      if site_state(names):
        self.owners[names] = _Owner(shape, self.spec(names, shape))

  def _find(self, names: tuple[str, ...]) -> _Owner | None:
    for n in self.lengths:
      if len(names) >= n and names[-n:] in self.owners:
        return self.owners[names[-n:]]
    return None

  def _site_kernel(self, names: tuple[str, ...]) -> tuple[_Owner, str] | None:
    """(the site's parameter, operand) of a transform-state leaf, or None."""
    root = _site_root(names)
    if root is None:
      return None
    for j in range(root + 2, len(names)):
      if names[j] not in _OPERANDS:
        continue
      site = names[root + 1:j]
      param = site[:-1] + (_USE_SUFFIX.sub("", site[-1]),)
      owner = self.owners.get(param)
      if owner is not None and _site_root(param) is None:
        return owner, names[j]
    return None

  def spec(self, names: tuple[str, ...], shape: tuple[int, ...]) -> tuple[Any, ...]:
    """The spec of a state leaf at ``names`` (its path) with ``shape``."""
    owner = self._find(names)
    if owner is not None and owner.shape == shape:
      return owner.spec
    found = self._site_kernel(names)
    if found is not None and found[1] == "weight":
      kernel = found[0]
      if 0 < len(shape) <= len(kernel.shape):  # broadcast: align right
        skip = len(kernel.shape) - len(shape)
        tail, spec = kernel.shape[skip:], kernel.spec[skip:]
        if all(d in (1, k) for d, k in zip(shape, tail)):
          return tuple(axis if d == k else None for d, k, axis in zip(shape, tail, spec))
    return (None,) * len(shape)


def tree_shardings(tree: Any, params: Any, mesh: Mesh, min_size: int) -> Any:
  """NamedShardings for every leaf of ``tree`` (arrays or ShapeDtypeStructs), by the module
  rules, with ``params`` the parameters its leaves are matched to."""
  index = _ParamIndex(params, mesh.shape[FSDP_AXIS], min_size)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, P(*index.spec(_names(path), tuple(x.shape)))), tree)


def state_shardings(state: Any, mesh: Mesh, min_size: int) -> Any:
  """Shardings of a TrainState (same structure), derived from ``state.params``.

  The params are matched relative to the params root, so every collection and optimizer
  state that mirrors them (``opt_state.mu["conv"]["kernel"]``) finds its parameter.
  """
  return tree_shardings(state, state.params, mesh, min_size)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches: first axis split over every device of the mesh (data and fsdp axes)."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of ``tree`` carrying ``shardings`` (a target to restore onto)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
  """Every device needs the same number of examples, and every process a whole share."""
  devices, processes = mesh.size, jax.process_count()
  if batch_size % devices or batch_size % processes:
    data, fsdp = mesh.shape["data"], mesh.shape[FSDP_AXIS]
    raise ValueError(f"{what}={batch_size} is not divisible by the {devices} devices of the "
                     f"data x fsdp mesh ({data}x{fsdp}, {processes} process(es)); use a "
                     f"multiple of {devices}")
