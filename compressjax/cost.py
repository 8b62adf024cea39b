"""Cost model: per-site MACs, parameters, BitOPs and bytes of an unmodified Linen model.

``profile(model, x)`` traces ``model.init`` abstractly (``jax.eval_shape``: no FLOPs, no memory)
inside ``flax.linen.intercept_methods`` and records every weight-bearing call (a *site*: Dense,
DenseGeneral, Conv, ConvTranspose, Einsum) by its '/'-joined module path, the same paths that
rules match. FracBits' penalties, CAT's bisection and every report read the resulting
``Profile``.

Conventions:
- MACs are **per single example**: the MACs of the traced call divided by the batch size (the
  leading dimension of the first array argument), so they do not depend on the example batch.
- Conv MACs = out_H * out_W * out_C * kh * kw * in_C / groups (strides, padding, dilation and
  depthwise convs all follow from the output shape and the kernel shape); ConvTranspose MACs =
  in_H * in_W * kh * kw * in_C * out_C; Dense MACs = tokens * in_features *
  out_features; Einsum MACs = the product of the sizes of all its indices. Bias adds, norms and
  activations are not counted.
- Dot-product attention inside ``nn.MultiHeadDotProductAttention`` (QK^T and AV) has no weights,
  so it is no site; its MACs are reported in ``Profile.extra_macs`` and in ``Profile.macs``,
  but not in BitOPs.
- ``total_params`` counts every leaf of the ``params`` collection (BatchNorm scale/bias,
  LayerNorm, embeddings too); non-site parameters count as float (32 bits) in ``size_bytes``.
  Running statistics (``batch_stats``) are not parameters.
- Bits: a scalar for every site, or a dict path -> bits (sites missing from the dict, or mapped
  to None, are float: 32 bits). Values may be jnp arrays (FracBits' fractional lambdas), in
  which case the costs are differentiable jnp scalars. Weight bits may also be a vector over the
  kernel's trailing (output) axes ("kernel-wise" bits); a site's cost then uses their mean.
"""

import dataclasses
import inspect
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import opt_einsum
from flax.core import meta

from compressjax.core.matching import path_str
from compressjax.core.sites import SITE_TYPES

FLOAT_BITS = 32

Number = int | float
BitsValue = Number | jax.Array | None
Bits = BitsValue | Mapping[str, BitsValue]


@dataclasses.dataclass(frozen=True)
class Site:
  """One weight-bearing call site; ``macs`` is per example (summed over repeated calls)."""

  path: str
  kind: str
  macs: Number
  kernel_params: int
  bias_params: int
  kernel_shape: tuple[int, ...]
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  calls: int = 1

  @property
  def params(self) -> int:
    return self.kernel_params + self.bias_params


@dataclasses.dataclass(frozen=True)
class Profile:
  """Costs of a model's sites; see the module docstring for the conventions."""

  sites: tuple[Site, ...]
  extra_macs: Mapping[str, Number]
  total_params: int
  batch_size: int

  @property
  def paths(self) -> tuple[str, ...]:
    return tuple(s.path for s in self.sites)

  @property
  def site_macs(self) -> Number:
    return sum(s.macs for s in self.sites)

  @property
  def macs(self) -> Number:
    """All counted MACs per example: sites plus extra (attention) MACs."""
    return self.site_macs + sum(self.extra_macs.values())

  @property
  def site_params(self) -> int:
    return sum(s.params for s in self.sites)

  @property
  def other_params(self) -> int:
    """Parameters outside sites (BatchNorm, LayerNorm, embeddings, ...)."""
    return self.total_params - self.site_params

  def __getitem__(self, path: str) -> Site:
    for s in self.sites:
      if s.path == path:
        return s
    raise KeyError(f"no site {path!r}; sites are: {', '.join(self.paths)}")

  def bitops_per_site(self, w_bits: Bits, a_bits: Bits) -> dict[str, Any]:
    """Per-site BitOPs = MACs * b_w * b_a."""
    self._check_keys(w_bits, "w_bits")
    self._check_keys(a_bits, "a_bits")
    return {
        s.path: s.macs * _weight_bits(w_bits, s) * _act_bits(a_bits, s.path) for s in self.sites
    }

  def bitops(self, w_bits: Bits, a_bits: Bits) -> Any:
    """Total BitOPs per example, ``sum_l MACs_l * b_w_l * b_a_l`` (differentiable in the bits)."""
    return sum(self.bitops_per_site(w_bits, a_bits).values())

  def bytes_per_site(self, w_bits: Bits) -> dict[str, Any]:
    """Per-site bytes: kernel params * b_w / 8 plus biases at 32 bits."""
    self._check_keys(w_bits, "w_bits")
    return {
        s.path: s.kernel_params * _weight_bits(w_bits, s) / 8 + s.bias_params * FLOAT_BITS / 8
        for s in self.sites
    }

  def size_bytes(self, w_bits: Bits) -> Any:
    """Model size in bytes: site kernels at their bits, biases and non-site params at 32 bits."""
    return sum(self.bytes_per_site(w_bits).values()) + self.other_params * FLOAT_BITS / 8

  def to_dict(self, w_bits: Bits = None, a_bits: Bits = None) -> dict[str, Any]:
    """A JSON-ready summary; bits default to float (32) everywhere. Bits must be concrete."""
    bitops = self.bitops_per_site(w_bits, a_bits)
    nbytes = self.bytes_per_site(w_bits)
    sites = []
    for s in self.sites:
      sites.append({
          **dataclasses.asdict(s),
          "params": s.params,
          "w_bits": float(_weight_bits(w_bits, s)),
          "a_bits": float(_act_bits(a_bits, s.path)),
          "bitops": float(bitops[s.path]),
          "bytes": float(nbytes[s.path]),
      })
    return {
        "macs_are_per": "example",
        "batch_size": self.batch_size,
        "sites": sites,
        "extra_macs": dict(self.extra_macs),
        "totals": {
            "macs": self.macs,
            "site_macs": self.site_macs,
            "params": self.total_params,
            "site_params": self.site_params,
            "other_params": self.other_params,
            "bitops": float(sum(bitops.values())),
            "bytes": float(self.size_bytes(w_bits)),
        },
    }

  def to_json(self, w_bits: Bits = None, a_bits: Bits = None, indent: int | None = 2) -> str:
    return json.dumps(self.to_dict(w_bits, a_bits), indent=indent)

  def table(self, w_bits: Bits = None, a_bits: Bits = None) -> str:
    """An aligned text table: path, kind, MACs, params, bits (w/a), BitOPs, bytes."""
    d = self.to_dict(w_bits, a_bits)
    rows = [("path", "kind", "MACs", "params", "bits w/a", "BitOPs", "bytes")]
    for s in d["sites"]:
      bits = f"{s['w_bits']:g}/{s['a_bits']:g}"
      rows.append((s["path"], s["kind"], _num(s["macs"]), _num(s["params"]), bits,
                   _num(s["bitops"]), _num(s["bytes"])))
    for path, macs in self.extra_macs.items():
      rows.append((path, "attention", _num(macs), "-", "-", "-", "-"))
    rows.append(("(non-site params)", "", "-", _num(self.other_params), "32", "-",
                 _num(self.other_params * FLOAT_BITS / 8)))
    t = d["totals"]
    rows.append(("total", "", _num(t["macs"]), _num(t["params"]), "", _num(t["bitops"]),
                 _num(t["bytes"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    note = f"(MACs and BitOPs per example; batch size traced: {self.batch_size})"
    return "\n".join(lines + [note])

  def _check_keys(self, bits: Bits, what: str) -> None:
    if isinstance(bits, Mapping):
      unknown = sorted(set(bits) - set(self.paths))
      if unknown:
        raise ValueError(
            f"{what} names unknown sites {unknown}; sites are: {', '.join(self.paths)}")


def profile(model: nn.Module, *example_args, method: Callable | str | None = None,
            **example_kwargs) -> Profile:
  """Profiles ``model`` called on the example inputs (arrays or ``jax.ShapeDtypeStruct``s).

  Runs ``model.init`` abstractly, so the model is neither modified nor executed. Non-array
  arguments (``train=True``) are passed through unchanged.
  """
  if not isinstance(model, nn.Module):
    raise TypeError(f"profile expects a flax.linen Module; got {type(model).__name__}")
  leaves, treedef = jax.tree.flatten((example_args, example_kwargs))
  is_array = [hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves]
  batch_size = _batch_size(example_args)
  calls: list[Site] = []  # One per call, MACs for the whole batch.
  extra: dict[str, Number] = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__":
      return out
    if isinstance(module, SITE_TYPES):
      calls.append(_site_call(module, args, kwargs, out))
    elif isinstance(module, nn.MultiHeadDotProductAttention):
      path = path_str(module.path)
      extra[path] = extra.get(path, 0) + _attention_macs(module, args, kwargs)
    return out

  def init(*arrays):
    it = iter(arrays)
    filled = [next(it) if a else x for x, a in zip(leaves, is_array)]
    args, kwargs = jax.tree.unflatten(treedef, filled)
    with nn.intercept_methods(interceptor):
      return model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, *args,
                        method=method, **kwargs)

  variables = jax.eval_shape(init, *[x for x, a in zip(leaves, is_array) if a])
  params = meta.unbox(variables.get("params", {}))
  total_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  return Profile(
      sites=_merge(calls, batch_size),
      extra_macs={p: _per_example(m, batch_size) for p, m in extra.items()},
      total_params=total_params,
      batch_size=batch_size,
  )


def _batch_size(example_args: tuple) -> int:
  for x in jax.tree.leaves(example_args):
    if hasattr(x, "shape") and len(x.shape) >= 1:
      return int(x.shape[0])
  raise ValueError("profile needs a positional array argument with a leading batch dimension "
                   f"(MACs are reported per example); got {example_args!r}")


def _site_call(module: nn.Module, args: tuple, kwargs: dict, out: jax.Array) -> Site:
  """The Site of one call, with the MACs of the whole traced batch."""
  params = meta.unbox(module.variables.get("params", {}))
  kernel = tuple(params["kernel"].shape)
  bias = math.prod(params["bias"].shape) if "bias" in params else 0
  x = args[0] if args else kwargs["inputs"]
  kind = next(t.__name__ for t in SITE_TYPES if isinstance(module, t))
  if kind == "ConvTranspose":
    macs = math.prod(x.shape[:-1]) * math.prod(kernel)
  elif kind == "Conv":
    macs = math.prod(out.shape) * math.prod(kernel[:-1])
  elif kind == "Dense":
    macs = math.prod(out.shape) * x.shape[-1]
  elif kind == "DenseGeneral":
    axes = module.axis if isinstance(module.axis, Iterable) else (module.axis,)
    macs = math.prod(out.shape) * math.prod(x.shape[a] for a in axes)
  else:
    eq = kwargs.get("einsum_str", args[1] if len(args) > 1 else None) or module.einsum_str
    macs = _einsum_macs(eq, x, params["kernel"])
  return Site(path_str(module.path), kind, macs, math.prod(kernel), bias, kernel,
              tuple(x.shape), tuple(out.shape))


def _einsum_macs(eq: str, lhs: Any, rhs: Any) -> int:
  """MACs of a two-operand einsum: the product of the sizes of all indices."""
  operands, _, _ = opt_einsum.parser.parse_einsum_input((eq.replace(" ", ""), lhs, rhs))
  sizes = {}
  for letters, operand in zip(operands.split(","), (lhs, rhs)):
    sizes.update(zip(letters, operand.shape))
  return math.prod(sizes.values())


def _attention_macs(module: nn.MultiHeadDotProductAttention, args: tuple, kwargs: dict) -> int:
  """MACs of QK^T and AV: 2 * tokens_q * tokens_kv * qkv_features per batch element."""
  bound = inspect.signature(type(module).__call__).bind(module, *args, **kwargs).arguments
  q = bound["inputs_q"]
  k = next((bound[n] for n in ("inputs_kv", "inputs_k") if bound.get(n) is not None), q)
  features = module.qkv_features or q.shape[-1]
  return 2 * math.prod(q.shape[:-1]) * k.shape[-2] * features


def _per_example(macs: int, batch_size: int) -> Number:
  return macs // batch_size if macs % batch_size == 0 else macs / batch_size


def _merge(calls: list[Site], batch_size: int) -> tuple[Site, ...]:
  """One Site per path (first-call order) with per-example MACs summed over repeated calls."""
  sites: dict[str, Site] = {}
  for c in calls:
    s = sites.get(c.path)
    sites[c.path] = c if s is None else dataclasses.replace(
        s, macs=s.macs + c.macs, calls=s.calls + 1)
  return tuple(dataclasses.replace(s, macs=_per_example(s.macs, batch_size))
               for s in sites.values())


def _lookup(bits: Bits, path: str) -> BitsValue:
  return bits.get(path) if isinstance(bits, Mapping) else bits


def _weight_bits(bits: Bits, site: Site) -> Any:
  """A site's (mean) weight bits; vectors must match the kernel's trailing axes."""
  b = _lookup(bits, site.path)
  if b is None:
    return FLOAT_BITS
  if getattr(b, "ndim", 0) > 0:
    if tuple(b.shape) != site.kernel_shape[len(site.kernel_shape) - b.ndim:]:
      raise ValueError(f"w_bits for site {site.path!r} has shape {tuple(b.shape)}; allowed: a "
                       f"scalar or the trailing axes of its kernel {site.kernel_shape}")
    return _check_range(b, site.path, "w_bits").mean()
  return _check_range(b, site.path, "w_bits")


def _act_bits(bits: Bits, path: str) -> Any:
  b = _lookup(bits, path)
  if b is None:
    return FLOAT_BITS
  if getattr(b, "ndim", 0) > 0:
    raise ValueError(f"a_bits for site {path!r} must be a scalar; got shape {tuple(b.shape)}")
  return _check_range(b, path, "a_bits")


def _check_range(b: Any, path: str, what: str) -> Any:
  """Checks concrete bits lie in [0, 32]; traced values pass unchecked."""
  if not isinstance(b, Number | np.ndarray | np.number | jax.Array):
    raise TypeError(
        f"{what} for site {path!r} must be a number or an array; got {type(b).__name__}")
  if isinstance(b, jax.core.Tracer):
    return b
  v = np.asarray(b)
  if v.size and (v.min() < 0 or v.max() > FLOAT_BITS):
    raise ValueError(f"{what} for site {path!r} is {b}; allowed range is 0..{FLOAT_BITS} "
                     f"({FLOAT_BITS} = float)")
  return b


def _num(x: Number) -> str:
  return f"{x:,.0f}" if float(x).is_integer() or abs(x) >= 100 else f"{x:,.2f}"
