"""Cost model: per-site MACs, parameters, BitOPs and bytes of an unmodified Linen or NNX model.

``profile(model, x)`` finds the model's sites with :func:`compressjax.core.discover` (abstract
tracing: no FLOPs, no memory): every ``dot_general`` / ``conv_general_dilated`` that reads a
parameter, in any layer (custom layers, ``nn.scan`` stacks, any method), keyed by the site's
``name`` (``"conv1/kernel"``; ``"shared/kernel#1"`` for a second use of a parameter), the same
names that rules match. FracBits' penalties, CAT's bisection and every report read the
resulting ``Profile``.

Conventions:
- MACs are **per single example**: the MACs of the traced op divided by the batch size (the
  leading dimension of the first array argument), so they do not depend on the example batch.
- dot_general MACs = prod(output shape) * prod(contracting sizes); conv MACs = prod(output
  shape) * prod(kernel spatial sizes) * input channels per group, divided by the input
  (lhs) dilation (a transposed conv counts only the taps that hit a real input, i.e.
  in_H * in_W * kh * kw * in_C * out_C). A site inside ``nn.scan`` over stacked layers counts
  every layer (times ``prod(stack_lengths)``). Bias adds, norms and activations are not counted.
- Ops between two activations (attention's QK^T and AV) have no weights: their MACs are
  reported in ``Profile.extra_macs`` (by site name) and in ``Profile.macs``, but not in BitOPs.
- ``total_params`` counts every leaf of the ``params`` collection (BatchNorm scale/bias,
  LayerNorm, embeddings too); non-site parameters count as float (32 bits) in ``size_bytes``.
  A site's ``kernel_params`` is its parameter's size (0 for a further use ``#i`` of a parameter
  already counted); ``bias_params`` the size of a ``bias`` parameter of the same module (given to
  the module's first site). Running statistics (``batch_stats``) are not parameters.
- Bits: a scalar for every site, or a dict site name -> bits (sites missing from the dict, or
  mapped to None, are float: 32 bits). Values may be jnp arrays (FracBits' fractional lambdas),
  in which case the costs are differentiable jnp scalars. Weight bits may also be a vector with
  one value per output feature of the op (the ``N`` of the weight view ``(*contracting, N)``,
  or the kernel's trailing axes: "kernel-wise" bits); a site's cost then uses their mean.
"""

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from flax.core import meta

from compressjax.core import discover
from compressjax.core import trace as trace_lib
from compressjax.core.tree_paths import flat_paths, key_name, path_str

FLOAT_BITS = 32
_SHORT = {"dot_general": "dot", "conv_general_dilated": "conv"}

Number = int | float
BitsValue = Number | jax.Array | None
Bits = BitsValue | Mapping[str, BitsValue]


@dataclasses.dataclass(frozen=True)
class Site:
  """The costs of one site (an op reading a parameter); ``macs`` is per example.

  ``path`` is the core site's ``name`` (``"conv1/kernel"``), ``kind`` its op
  (``"dot_general"`` / ``"conv_general_dilated"``), ``kernel_shape`` the weight operand's shape
  as the op sees it, ``view_shape`` the weight view ``(*contracting, N)`` quantizers see.
  """

  path: str
  kind: str
  macs: Number
  kernel_params: int
  bias_params: int
  kernel_shape: tuple[int, ...]
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  module: str = ""
  param: str | None = None
  view_shape: tuple[int, ...] = ()
  stack_lengths: tuple[int, ...] = ()
  calls: int = 1

  @property
  def name(self) -> str:
    return self.path

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
    """An aligned text table: path, kind (dot / conv), MACs, params, bits (w/a), BitOPs, bytes."""
    d = self.to_dict(w_bits, a_bits)
    rows = [("path", "kind", "MACs", "params", "bits w/a", "BitOPs", "bytes")]
    for s in d["sites"]:
      bits = f"{s['w_bits']:g}/{s['a_bits']:g}"
      rows.append((s["path"], _SHORT.get(s["kind"], s["kind"]), _num(s["macs"]), _num(s["params"]), bits,
                   _num(s["bitops"]), _num(s["bytes"])))
    for path, macs in self.extra_macs.items():
      rows.append((path, "act x act", _num(macs), "-", "-", "-", "-"))
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

  Traces the model abstractly, so it is neither modified nor executed. Non-array arguments
  (``train=True``) are passed through unchanged.
  """
  batch_size = _batch_size(example_args)
  if isinstance(model, nn.Module):
    sites, param_sizes = _linen_sites(model, example_args, example_kwargs, method)
  elif isinstance(model, nnx.Module):
    if method is not None and not isinstance(method, str):
      raise TypeError("profile: an NNX model's method is given by name (method='encode')")
    from compressjax.core.nnx_compress import param_shapes  # pylint: disable=g-import-not-at-top

    sites = discover(model, *example_args, method=method, **example_kwargs)
    param_sizes = {p: math.prod(shape) for p, shape in param_shapes(model).items()}
  else:
    raise TypeError(f"profile expects a flax.linen or flax.nnx Module; got {type(model).__name__}")
  total_params = sum(param_sizes.values())
  out: list[Site] = []
  extra: dict[str, Number] = {}
  counted: set[str] = set()
  biased: set[str] = set()
  for s in sites:
    macs = _per_example(_op_macs(s) * math.prod(s.stack_lengths), batch_size)
    if not s.has_weight:
      extra[s.name] = extra.get(s.name, 0) + macs
      continue
    kernel = 0 if s.param in counted else param_sizes.get(s.param, 0)
    counted.add(s.param)
    bias_path = f"{s.module}/bias" if s.module else "bias"
    bias = 0
    if bias_path in param_sizes and bias_path not in biased and s.param != bias_path:
      bias = param_sizes[bias_path]
      biased.add(bias_path)
    out.append(Site(
        path=s.name, kind=s.op, macs=macs, kernel_params=kernel, bias_params=bias,
        kernel_shape=tuple(s.shapes[s.weight_index]),
        input_shape=tuple(s.shapes[1 - s.weight_index]), output_shape=_out_shape(s),
        module=s.module, param=s.param, view_shape=tuple(s.weight_layout()[1]),
        stack_lengths=tuple(s.stack_lengths)))
  return Profile(sites=tuple(out), extra_macs=extra, total_params=total_params,
                 batch_size=batch_size)


def _linen_sites(model: nn.Module, args, kwargs, method) -> tuple[list, dict[str, int]]:
  """The sites of a Linen model and the size of each of its parameters, by name."""
  from compressjax.core.compress import split_dynamic  # pylint: disable=g-import-not-at-top

  dyn, rebuild = split_dynamic((args, kwargs))

  def init(dyn):
    a, k = rebuild(dyn)
    return _plain(model).init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, *a,
                              method=method, **k)

  variables = jax.eval_shape(init, dyn)
  params = meta.unbox(variables.get("params", {}))
  sites = _sites(model, variables, args, kwargs, method)
  return sites, {p: math.prod(leaf.shape) for p, leaf in flat_paths(params)}


def _plain(model: nn.Module) -> nn.Module:
  from compressjax.core.compress import uncompressed  # pylint: disable=g-import-not-at-top

  return uncompressed(model)


def _sites(model, variables, args, kwargs, method) -> list:
  """``core.discover``'s sites (same names). Traced here instead, with every collection mutable,
  for a model that writes a collection in the traced call (BatchNorm with ``train=True``:
  discover applies the model with immutable collections, which such models refuse), for
  ``jax.ShapeDtypeStruct`` inputs (discover's abstract init closes over its inputs, so it
  cannot take them) and for a callable ``method``."""
  abstract = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves((args, kwargs)))
  name = method if isinstance(method, str) or method is None else None
  if not abstract and (name is not None or method is None):
    try:
      return discover(model, *args, method=name, **kwargs)
    except flax.errors.ModifyScopeVariableError:
      pass
  return _trace_mutable(_plain(model), variables, args, kwargs, method)


def _trace_mutable(model, variables, args, kwargs, method) -> list:
  from compressjax.core.compress import split_dynamic  # pylint: disable=g-import-not-at-top

  dyn, rebuild = split_dynamic((args, kwargs))

  def scope(next_fun, a, k, context):
    with trace_lib.scoped(path_str(context.module.path)):
      return next_fun(*a, **k)

  def fn(variables, dyn):
    a, k = rebuild(dyn)
    with nn.intercept_methods(scope):
      return model.apply(variables, *a, rngs={"dropout": jax.random.key(1)}, method=method,
                         mutable=True, **k)

  fn_args = (meta.unbox(variables), dyn)
  paths = []
  for kp, _ in jax.tree_util.tree_flatten_with_path(fn_args)[0]:
    names = [key_name(k) for k in kp]
    is_param = len(names) >= 3 and names[0] == "0" and names[1] == "params"
    paths.append("/".join(names[2:]) if is_param else None)
  return trace_lib.trace(fn, fn_args, paths).site_list


def _out_shape(site) -> tuple[int, ...]:
  lhs, rhs = (jax.ShapeDtypeStruct(s, d) for s, d in zip(site.shapes, site.dtypes))
  return tuple(jax.eval_shape(site.bind, lhs, rhs).shape)


def _op_macs(site) -> int:
  """MACs of one execution of the op (whole traced batch)."""
  out = math.prod(_out_shape(site))
  if site.op == "dot_general":
    lhs = site.shapes[0]
    return out * math.prod(lhs[a] for a in site.contracting(0))
  spec = site.params["dimension_numbers"]
  rhs = site.shapes[1]
  taps = math.prod(rhs[a] for a in spec.rhs_spec[2:]) * rhs[spec.rhs_spec[1]]
  dilation = math.prod(site.params.get("lhs_dilation") or (1,))
  macs = out * taps
  return macs // dilation if macs % dilation == 0 else macs / dilation


def _batch_size(example_args: tuple) -> int:
  for x in jax.tree.leaves(example_args):
    if hasattr(x, "shape") and len(x.shape) >= 1:
      return int(x.shape[0])
  raise ValueError("profile needs a positional array argument with a leading batch dimension "
                   f"(MACs are reported per example); got {example_args!r}")


def _per_example(macs: Number, batch_size: int) -> Number:
  if isinstance(macs, int) and macs % batch_size == 0:
    return macs // batch_size
  return macs / batch_size


def _lookup(bits: Bits, path: str) -> BitsValue:
  return bits.get(path) if isinstance(bits, Mapping) else bits


def _weight_bits(bits: Bits, site: Site) -> Any:
  """A site's (mean) weight bits; vectors have one value per output feature of the op."""
  b = _lookup(bits, site.path)
  if b is None:
    return FLOAT_BITS
  if getattr(b, "ndim", 0) > 0:
    shape = tuple(b.shape)
    trailing = site.kernel_shape[len(site.kernel_shape) - b.ndim:]
    if shape != trailing and shape != tuple(site.view_shape[-1:]):
      raise ValueError(f"w_bits for site {site.path!r} has shape {shape}; allowed: a scalar, "
                       f"one value per output feature {tuple(site.view_shape[-1:])} or the "
                       f"trailing axes of its kernel {site.kernel_shape}")
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
