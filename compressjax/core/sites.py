"""Sites: the weight-bearing layer calls of a model, found by tracing it abstractly."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax

from compressjax.core.matching import path_str

SITE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dense,
    nn.DenseGeneral,
    nn.Conv,
    nn.ConvTranspose,
    nn.Einsum,
)


def is_site(module: nn.Module, method_name: str) -> bool:
  return method_name == "__call__" and isinstance(module, SITE_TYPES)


@dataclasses.dataclass(frozen=True)
class Site:
  """One layer call: its module path, layer type, input and kernel shapes."""

  path: str
  kind: str
  input_shape: tuple[int, ...]
  kernel_shape: tuple[int, ...] | None


def discover(model: nn.Module, *args: Any, method: str | None = None, **kwargs: Any) -> list[Site]:
  """Sites of ``model`` in call order, by abstract evaluation of ``init`` (no FLOPs spent)."""
  found: dict[str, Site] = {}

  def record(next_fun, call_args, call_kwargs, context):
    module = context.module
    out = next_fun(*call_args, **call_kwargs)
    if is_site(module, context.method_name):
      path = path_str(module.path)
      kernel = module.variables.get("params", {}).get("kernel")
      found.setdefault(
          path,
          Site(
              path=path,
              kind=type(module).__name__,
              input_shape=tuple(call_args[0].shape),
              kernel_shape=None if kernel is None else tuple(kernel.shape),
          ),
      )
    return out

  def init(*a, **k):
    with nn.intercept_methods(record):
      return model.init(jax.random.key(0), *a, method=method, **k)

  jax.eval_shape(init, *args, **kwargs)
  return list(found.values())
