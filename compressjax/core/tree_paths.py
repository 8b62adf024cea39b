"""Tree-path helpers: one place that turns pytree key paths into '/'-joined names and back."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def key_name(key: Any) -> str:
  """The name of one jax key-path entry (DictKey, GetAttrKey, SequenceKey, FlattenedIndexKey)."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_name(key_path: Iterable[Any]) -> str:
  """The '/'-joined name of a leaf's key path; an NNX ``Variable``'s ``.value`` (a trailing
  attribute key ``value``) is not part of it: ``"conv0/kernel"`` in Linen and NNX alike."""
  keys = list(key_path)
  if keys and type(keys[-1]).__name__ == "GetAttrKey" and key_name(keys[-1]) == "value":
    keys = keys[:-1]
  return path_str(keys)


def path_str(path: Iterable[Any]) -> str:
  """Joins a module or parameter path (names or key-path entries) with '/'."""
  return "/".join(p if isinstance(p, str) else key_name(p) for p in path)


def get_path(tree: Any, name: str) -> Any:
  """``tree[a][b][c]`` for ``name = "a/b/c"``; None when any part is missing."""
  for part in name.split("/"):
    if not hasattr(tree, "get"):
      return None
    tree = tree.get(part)
    if tree is None:
      return None
  return tree


def set_path(tree: dict, name: str, value: Any) -> None:
  """Sets ``tree[a][b][c] = value`` for ``name = "a/b/c"``, creating (copying) dicts on the way."""
  *parents, last = name.split("/")
  for part in parents:
    child = tree.get(part)
    child = {} if child is None else dict(child)
    tree[part] = child
    tree = child
  tree[last] = value


def flat_paths(tree: Any, is_leaf=None) -> list[tuple[str, Any]]:
  """``(path, leaf)`` for every leaf of ``tree``, in flattening order, named by
  :func:`leaf_name` (NNX state leaves as their parameters)."""
  import jax  # pylint: disable=g-import-not-at-top

  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return [(leaf_name(k), leaf) for k, leaf in flat]
