"""``compress(model, rules)``: an unmodified Flax Linen model with transforms at its sites.

The returned module is an instance of a subclass of the model's own class, with the same fields
and the same parameter tree, plus a ``compression`` field. Its ``__call__`` enters
``nn.intercept_methods``; every site call (Dense, DenseGeneral, Conv, ConvTranspose, Einsum)
whose module path matches a rule gets

* its input rewritten by ``rule.act`` before the layer runs, and
* its kernel rewritten by ``rule.weight`` when the layer reads it (``self.param("kernel")``):
  the module's ``param`` method is shadowed for the duration of that one call and restored
  after, so the layer's own code (padding, bias, dtype promotion) runs unchanged.

Transform state lives in the site's own scope: learnable values in ``params`` under names
``kernel_*`` / ``input_*`` (so any optimizer trains them; :func:`param_labels` tells them
apart), running statistics in the ``quant_stats`` collection (updated when that collection
is mutable, as during training and calibration).

In serving mode (built by :mod:`compressjax.export`) the kernel variable holds a
:class:`~compressjax.qarray.QArray`; Dense sites then compute through the kernel
dispatcher and other sites through the dequantized weight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax import lax

from compressjax.core.matching import first_match, path_str, warn_unused
from compressjax.core.rule import Rule
from compressjax.core.sites import is_site
from compressjax.qarray import QArray

Array = jax.Array

STATS = "quant_stats"
WEIGHT_PREFIX = "kernel_"
INPUT_PREFIX = "input_"


@dataclasses.dataclass(frozen=True)
class Compression:
  """Static description of a compressed model (hashable: safe as a jit-static field).

  Attributes:
    rules: the rules, first match wins.
    serve: kernels are QArrays written by :func:`compressjax.export.export`.
    backend: kernel dispatcher backend used when serving (None: automatic).
    interceptors: further ``nn.intercept_methods`` interceptors entered inside the rules' one
      (outermost first), for methods that act on layers other than sites, e.g. AdaBits'
      switchable BatchNorm. They must be hashable (frozen dataclasses or functions).
  """

  rules: tuple[Rule, ...] = ()
  serve: bool = False
  backend: str | None = None
  interceptors: tuple[Callable, ...] = ()

  def rule_for(self, path: str) -> Rule | None:
    match = first_match(self.rules, path)
    return None if match is None else match[1]


def compress(model: nn.Module, rules: Sequence[Rule], **options: Any) -> nn.Module:
  """Returns ``model`` with ``rules`` applied at its sites (see the module docstring).

  Rules matching no site are reported (``UnusedRuleWarning``) when the model is initialised.
  ``options`` are further :class:`Compression` fields.
  """
  if not isinstance(model, nn.Module):
    raise TypeError(f"compress expects a flax.linen.Module, got {type(model).__name__}")
  rules = tuple(rules)
  for i, rule in enumerate(rules):
    if not isinstance(rule, Rule):
      raise TypeError(f"rules[{i}] is {rule!r}; expected compressjax Rule(pattern=..., ...)")
  base = unwrap_class(type(model))
  fields = {
      f.name: getattr(model, f.name)
      for f in dataclasses.fields(model)
      if f.init and f.name not in ("parent", "name", "compression")
  }
  return _compressed_class(base)(**fields, compression=Compression(rules, **options))


def with_compression(model: nn.Module, **changes: Any) -> nn.Module:
  """A compressed model with some :class:`Compression` fields replaced."""
  spec = getattr(model, "compression", None)
  if spec is None:
    raise TypeError(f"{type(model).__name__} is not a compressed model (use compress first)")
  return model.clone(compression=dataclasses.replace(spec, **changes))


def is_compressed(model: nn.Module) -> bool:
  return isinstance(getattr(model, "compression", None), Compression)


def unwrap_class(cls: type) -> type:
  """The user's model class behind a compressed class."""
  return getattr(cls, "_compressjax_base", cls)


def uncompressed(model: nn.Module) -> nn.Module:
  """The plain model behind a compressed one (same fields, no interception)."""
  if not is_compressed(model):
    return model
  base = unwrap_class(type(model))
  fields = {
      f.name: getattr(model, f.name)
      for f in dataclasses.fields(base)
      if f.init and f.name not in ("parent", "name")
  }
  return base(**fields)


@functools.cache
def _compressed_class(base: type) -> type:
  def __call__(self, *args, **kwargs):
    seen: list[str] = []
    with contextlib.ExitStack() as stack:
      stack.enter_context(nn.intercept_methods(functools.partial(_intercept, self.compression, seen)))
      for interceptor in self.compression.interceptors:
        stack.enter_context(nn.intercept_methods(interceptor))
      out = super(cls, self).__call__(*args, **kwargs)
    if self.is_initializing() and self.compression.rules:
      warn_unused(self.compression.rules, seen)
    return out

  cls = type(
      f"Compressed{base.__name__}",
      (base,),
      {
          "__annotations__": {"compression": Compression},
          "compression": Compression(),
          "__call__": __call__,
          "__module__": base.__module__,
          "_compressjax_base": base,
      },
  )
  return cls


def _intercept(spec: Compression, seen: list[str], next_fun, args, kwargs, context):
  module = context.module
  if not is_site(module, context.method_name):
    return next_fun(*args, **kwargs)
  path = path_str(module.path)
  if path not in seen:
    seen.append(path)
  rule = spec.rule_for(path)
  if rule is None or rule.is_float:
    return next_fun(*args, **kwargs)
  if rule.act is not None:
    x = apply_transform(module, INPUT_PREFIX, rule.act, args[0])
    args = (x, *args[1:])
  if rule.weight is None:
    return next_fun(*args, **kwargs)
  return _call_with_kernel(module, spec, rule.weight, next_fun, args, kwargs)


def apply_transform(module: nn.Module, prefix: str, transform: Any, x: Array) -> Array:
  """Runs ``transform`` on ``x`` with state kept in ``module``'s scope under ``prefix``.

  A ValueError from the transform (bad bits, group size, missing calibration) is re-raised
  naming the site and the operand, so the user knows which layer to fix.
  """
  try:
    params, stats_vars = site_state(module, prefix, transform, x)
    stats = {k: v.value for k, v in stats_vars.items()}
    if module.is_initializing():
      # The init forward pass sees stats as if calibrated on the init batch; the stored
      # stats stay fresh, so static quantizers still demand real calibration.
      return transform.fake(x, params, transform.update(x, params, stats))
    if module.is_mutable_collection(STATS):
      stats = transform.update(x, params, stats)
      for k, v in stats.items():
        stats_vars[k].value = v
    return transform.fake(x, params, stats)
  except ValueError as e:
    if str(e).startswith("site "):
      raise
    operand = "kernel" if prefix == WEIGHT_PREFIX else "input"
    raise ValueError(
        f"site {path_str(module.path)!r} ({type(module).__name__} {operand} of shape "
        f"{tuple(x.shape)}): {e}"
    ) from e


def site_state(module: nn.Module, prefix: str, transform: Any, x: Array):
  """Creates (at init) or reads the transform's params and stats variables in ``module``."""
  initial = functools.cache(lambda: transform.init(x))
  shapes = jax.eval_shape(transform.init, x)
  params = {
      name: nn.Module.param(module, prefix + name, lambda _, n=name: initial()[0][n])
      for name in shapes[0]
  }
  stats = {
      name: module.variable(STATS, prefix + name, lambda n=name: initial()[1][n])
      for name in shapes[1]
  }
  return params, stats


def _call_with_kernel(module, spec, transform, next_fun, args, kwargs):
  """Calls the layer with its ``param("kernel")`` rewritten (and restored afterwards)."""
  read_param = module.param
  shadow: dict[str, Any] = {}
  if spec.serve:
    stored = module.get_variable("params", "kernel")
    if not isinstance(stored, QArray):
      raise ValueError(
          f"site {path_str(module.path)!r}: serving expects an exported QArray kernel, found "
          f"{type(stored).__name__}; build serving variables with compressjax.export"
      )
    kernel = stored.dequantize(module.param_dtype)
    shadow["param"] = lambda name, *a, **k: kernel if name == "kernel" else read_param(name, *a, **k)
    if isinstance(module, nn.Dense) and module.dot_general_cls is None:
      shadow["dot_general"] = _dispatch_dot_general(stored, spec.backend)
  else:

    def param(name: str, *init_args, **init_kwargs):
      value = read_param(name, *init_args, **init_kwargs)
      return apply_transform(module, WEIGHT_PREFIX, transform, value) if name == "kernel" else value

    shadow["param"] = param
  with shadowed(module, shadow):
    return next_fun(*args, **kwargs)


@contextlib.contextmanager
def shadowed(module: nn.Module, attrs: dict[str, Any]):
  """Sets instance attributes of a (frozen) module for one call, then restores them."""
  missing = object()
  saved = {k: module.__dict__.get(k, missing) for k in attrs}
  for k, v in attrs.items():
    object.__setattr__(module, k, v)
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is missing:
        object.__delattr__(module, k)
      else:
        object.__setattr__(module, k, v)


def _dispatch_dot_general(q: QArray, backend: str | None):
  """A ``dot_general`` for Dense that multiplies by the QArray through the kernel dispatcher."""

  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    if tuple(lhs_contract) == (lhs.ndim - 1,) and tuple(rhs_contract) == (0,) and not lhs_batch:
      from compressjax.kernels import dispatch  # pylint: disable=g-import-not-at-top

      out = dispatch.matmul(lhs, q, backend=backend)
      return out.astype(preferred_element_type or out.dtype)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)

  return dot_general


def param_labels(params: Any, quantizer_label: str = "quantizer", other_label: str = "model"):
  """Labels every leaf of ``params`` for ``optax.multi_transform``: transform state vs model.

  Quantizer parameters (step sizes, clip levels, bit-widths) usually get no weight decay and
  sometimes their own learning rate.
  """

  def label(path, _):
    name = str(getattr(path[-1], "key", path[-1]))
    is_transform = name.startswith(WEIGHT_PREFIX) or name.startswith(INPUT_PREFIX)
    return quantizer_label if is_transform else other_label

  return jax.tree_util.tree_map_with_path(label, params)


def init_from(
    model: nn.Module, variables: dict, *args: Any, rng: Array | None = None, **kwargs: Any
) -> dict:
  """Variables of a compressed ``model`` that start from a float model's ``variables``.

  Runs one forward pass (use eval-mode kwargs, e.g. ``train=False``) on ``args`` with the float
  values in place, so transform state is initialised from the real weights and activations
  (LSQ step sizes, calibration ranges), then returns all collections.
  """
  rng = jax.random.key(0) if rng is None else rng
  # Jitted (kwargs closed over as static flags): the eager pass costs seconds of op dispatch.
  apply = jax.jit(lambda v, r, *a: model.apply(v, *a, rngs={"params": r}, mutable=True, **kwargs))
  _, new = apply(variables, rng, *args)
  return dict(new)
