"""Export: a trained fake-quant model -> QArray weights and a serving model on integer paths.

``export`` follows the trace: it traces the model on example inputs, and for every site whose
rule has a weight transform computes the op's weight operand from its parameter (through the
same reshapes / transposes / scan slices the model applies, so a scanned stack exports as one
stacked QArray), and writes the QArray that the transform's ``export`` makes. Site by site: a
site of at least :data:`COMPILE_MIN_SIZE` weight elements runs one compiled function per
(transform, operand steps, layout, shape), whose temporaries are fused, so peak memory is the
float parameters plus the packed ones plus about one packed site (on 208 MB of Dense weights:
1.2x the float bytes, ``benchmarks/export_memory.py``); smaller sites run op by op (their float
temporaries are small, and eager ops compile once per primitive and shape, not per site). Codes
are the eager fake-quant's bit for bit only where the quantizer writes no division that XLA
compiles differently in and out of a fusion (Uniform: ``quant.uniform._inverse``, tested).
Transforms whose export reads values (``keep_zeros``) or that are unhashable run eagerly.
Parameters that only such sites read are left out of the serving variables.

Serving (:func:`serve_handler`) computes each site on the fastest correct path:

* ``int8 dot`` / ``int8 conv``: weights <= 8 bits with per-channel or per-tensor scales and an
  activation quantizer with an integer form and a per-tensor scale (dots: or a dynamic
  per-token scale, one per row, when the dot contracts only the input's last axis):
  int8 x int8 -> int32 (``preferred_element_type=int32``) plus one fused rescale; zero points
  and the unsigned-code offset are folded in exactly with row / column sums.
* ``kernel``: float (or fake-quantized) activations times a packed weight through
  :func:`compressjax.kernels.matmul` (a ``dot_general`` whose weight has no batch axes).
* ``xla dequant``: dequantize, then the op (what nothing better serves).

Served vs fake-quant, the bound (tested; :func:`site_agreement` measures it): given the same
input, every site's served output equals fake-quant's to float summation order (measured
<= 1e-6 relative, tested at 1e-5). The int8 paths sum exactly where fake-quant sums floats, so
a value that the next activation quantizer sees within an ulp of a rounding tie can round one
code apart; that code then moves later sites' inputs, which can flip more codes downstream (a
cascade: on QAT fine-tuned W4A8 / W4A4 LMs the first code differs at site 8 / 15 of 25, and
1-2% of the last block's input codes; single logits move by up to 1.8 while the bpb agrees to
1e-3; ``experiments/lm_serve_agreement.py``).
NaN inputs give NaN in the same outputs (the integer paths put them back).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from compressjax.core.checks import check_finite, check_transform_state
from compressjax.core.compress import (SERVED, SITE_PARAMS, STATS, Compression, as_dict,
                                       is_compressed, join_state, operand_state, site_error,
                                       trace_linen, weight_view)
from compressjax.core.trace import Site, operand_of
from compressjax.core.tree_paths import flat_paths, get_path, set_path
from compressjax.qarray import QArray

INT8 = "int8 dot"


def export(model: Any, variables: dict | None = None, *args: Any, backend: str | None = None,
           method: str | None = None, **kwargs: Any):
  """Integer export of a compressed model.

  Linen: ``export(model, variables, *example_args)`` -> ``(serving_model, serving_variables)``;
  the example inputs (arrays or ShapeDtypeStructs) only fix the trace. NNX:
  ``export(compressed_module)`` -> a serving module (it reuses the compress-time example).
  ``backend`` pins the kernel dispatcher's backend (None: automatic).
  """
  if not is_compressed(model):
    raise TypeError(
        f"export needs a compressed model (compressjax.compress), got {type(model).__name__}")
  from flax import nnx  # pylint: disable=g-import-not-at-top

  if isinstance(model, nnx.Module):
    return _export_nnx(model, backend)
  if variables is None or not args:
    raise TypeError("export(linen_model, variables, *example_inputs): give the inputs (or "
                    "ShapeDtypeStructs) the model is called with")
  variables = as_dict(variables)
  tr = trace_linen(model, variables, *args, method=method, **kwargs)
  user = dict(variables["params"])
  site_params = user.pop(SITE_PARAMS, {})
  state = join_state(tr.site_list, site_params, variables.get(STATS, {}))
  served, absent = export_sites(model.compression, tr, lambda p: get_path(user, p), state)
  for path, _, _ in absent:
    _delete(user, path)
  serving = {k: v for k, v in variables.items() if k not in ("params", STATS)}
  serving["params"] = user
  serving[SERVED] = served
  spec = dataclasses.replace(model.compression, serve=serve_handler, backend=backend, absent=absent)
  return model.clone(compression=spec), serving


def export_sites(spec: Compression, tr, param_value, state: dict):
  """QArrays for every weight site; returns (nested served state, absent parameter specs)."""
  served: dict = {}
  exported_params = set()
  for site in tr.site_list:
    rule = spec.rule_for(site)
    if rule is None or rule.is_float:
      continue
    st = state.get(site.name, {"params": {}, "stats": {}})
    entry = {}
    weight_t, act_t = (rule.weight, rule.act) if site.has_weight else (None, None)
    if site.has_weight and weight_t is not None:
      w = param_value(site.param)
      check_finite({site.param: w}, f"export of site {site.name!r}")
      entry["weight"] = _export_weight(site, weight_t, w, st["params"], st["stats"])
      exported_params.add(site.param)
    for operand in site.operands:
      if operand != "weight" and operand in st["params"] or operand in st["stats"]:
        if operand != "weight":
          entry[operand] = {"params": st["params"].get(operand, {}),
                            "stats": st["stats"].get(operand, {})}
          check_transform_state(site.name, operand, entry[operand])
    if entry:
      set_path(served, site.name, entry)
  absent = []
  for param in sorted(exported_params):
    uses = tr.param_uses.get(param, [])
    if uses and all(u.startswith("site ") and _has_weight_rule(spec, tr, u[5:]) for u in uses):
      value = param_value(param)
      absent.append((param, tuple(value.shape), str(np.dtype(value.dtype))))
  return served, tuple(absent)


def _has_weight_rule(spec, tr, name):
  site = next(s for s in tr.site_list if s.name == name)
  rule = spec.rule_for(site)
  return rule is not None and rule.weight is not None


# Weight elements from which a site's export is compiled (fused temporaries) rather than run op by
# op: 1 MB of f32. Below it compiling costs more time than the temporaries cost memory (the test
# suite, which exports hundreds of tiny models, took 30% more CPU compiling every site).
COMPILE_MIN_SIZE = 1 << 18


def _export_weight(site: Site, transform, param, site_params, site_stats) -> QArray:
  one_layer = jax.ShapeDtypeStruct(tuple(site.shapes[site.weight_index]), site.dtypes[
      site.weight_index])
  view, _ = weight_view(site)
  params, stats = operand_state(transform, jax.eval_shape(view, one_layer), site_params,
                                site_stats, "weight", site)
  key = _SiteKey.of(site, transform) if math.prod(np.shape(param)) >= COMPILE_MIN_SIZE else None
  try:
    if key is not None:
      try:
        return _compiled_export(key)(param, params, stats)
      except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        pass  # the transform's export reads values (keep_zeros' exact-zero check): run eagerly
    return _site_export(site, transform)(param, params, stats)
  except ValueError as e:
    operand = jax.eval_shape(functools.partial(operand_of, site), param)
    raise site_error(site, "weight", operand, e) from e


def _site_export(site: Site, transform):
  """``param -> QArray`` of one site: its operand (scan stacks: leading axes), viewed, exported."""
  view, _ = weight_view(site)

  def one(w, p, s):
    return transform.export(view(w), p, s)

  for _ in range(len(site.stack)):
    one = jax.vmap(one)
  return lambda param, p, s: one(operand_of(site, param), p, s)


class _SiteKey:
  """What a site's export computes: the transform, the operand's steps from its parameter, the
  weight layout and the stack depth (shapes and dtypes: jit's own cache). Equal keys share one
  compiled export."""

  def __init__(self, site: Site, transform, key: tuple):
    self.site, self.transform, self.key, self.hash = site, transform, key, hash(key)

  @classmethod
  def of(cls, site: Site, transform) -> _SiteKey | None:
    """The key, or None if the transform or a step holds something unhashable (arrays, lists)."""
    steps = tuple((prim, tuple(sorted(p.items())), d) for prim, p, d in site.origin.steps)
    try:
      return cls(site, transform, (transform, steps, site.weight_layout(), len(site.stack)))
    except TypeError:
      return None

  def __hash__(self):
    return self.hash

  def __eq__(self, other):
    return isinstance(other, _SiteKey) and self.key == other.key


@functools.lru_cache(maxsize=256)
def _compiled_export(key: _SiteKey):
  """One compiled export per key: XLA fuses the quantizer's and the packing's elementwise ops,
  so a site's temporaries are a few fused buffers, not a float / int32 copy of the weight per op.
  See the module docstring for when its codes equal the eager ones bit for bit."""
  return jax.jit(_site_export(key.site, key.transform))


def _delete(tree: dict, path: str) -> None:
  *parents, last = path.split("/")
  for part in parents:
    tree[part] = dict(tree[part])
    tree = tree[part]
  del tree[last]


def _export_nnx(module, backend):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from compressjax.core import nnx_compress  # pylint: disable=g-import-not-at-top

  example = module.example
  tr = nnx_compress.trace_nnx(module, example.args, example.kwargs, method=example.method)
  # tree_map rebuilds the Variables: the serving copy shares arrays, not Variables, with the
  # model, and it keeps the active switch's values (AdaBits' per-bit BatchNorm).
  with nnx_compress.switched_in(module):
    graphdef, params, rest = nnx.split(module.model, nnx.Param, ...)
    params, rest = jax.tree_util.tree_map(lambda a: a, (params, rest))
  values = dict(flat_paths(params))
  state = join_state(tr.site_list, module.site_values("params"), module.site_values("stats"))
  served, absent = export_sites(module.compression, tr, values.get, state)
  copy = nnx.merge(graphdef, params, rest)
  drop = {p for p, _, _ in absent}
  for path, var in nnx.iter_graph(copy):
    if isinstance(var, nnx.Param) and "/".join(map(str, path)) in drop:
      var.set_value(jnp.zeros((0,), var.get_value().dtype))
  spec = dataclasses.replace(module.compression, serve=serve_handler, backend=backend, absent=absent)
  out = nnx_compress.CompressedModule(copy, spec, {}, {}, served, example)
  out.use_running_average = True
  return out


# ------------------------------------------------------------------------------------------------
# Serving.


def serve_handler(spec: Compression, record: dict | None = None, fake_numerics: bool = False):
  """The site handler of a serving model; ``record`` (if given) gets ``{site: (path, why)}``.

  ``fake_numerics``: every weight site on the xla dequant path (fake-quantized input times the
  dequantized weight in float), the fake-quant model's arithmetic from the exported state.
  """

  def handle(site: Site, ins, state):
    rule = spec.rule_for(site)
    if rule is None or rule.is_float or state is None:
      _note(record, site, "float", "no rule" if rule is None or rule.is_float else "no state")
      return site.bind(*ins), None
    if not site.has_weight:
      outs = [_fake(t, x, state.get(op)) for t, x, op in
              zip(rule.transforms_for(site), ins, site.operands)]
      _note(record, site, "fake-quant float", "activation x activation op")
      return site.bind(*outs), None
    w_index = site.weight_index
    x_index = 1 - w_index
    x = ins[x_index]
    act = state.get("input")
    qw = state.get("weight")
    if qw is None:  # float weight, quantized input
      outs = list(ins)
      outs[x_index] = _fake(rule.act, x, act)
      _note(record, site, "float", "no weight transform")
      return site.bind(*outs), None
    why = "fake_numerics" if fake_numerics else _int_path_refusal(site, rule.act, qw)
    if why is None:
      _note(record, site, INT8 if site.op == "dot_general" else "int8 conv", "")
      return _integer_op(site, rule.act, x, act, qw), None
    xf = _fake(rule.act, x, act)
    if site.op == "dot_general" and _kernel_ok(site) and not fake_numerics:
      _note(record, site, "kernel", why)
      return _kernel_dot(site, xf, qw, spec.backend), None
    _note(record, site, "xla dequant", why)
    _, unview = weight_view(site)
    w = unview(qw.dequantize(jnp.dtype(site.dtypes[w_index])))
    outs = [None, None]
    outs[w_index], outs[x_index] = w, xf
    return site.bind(*outs), None

  return handle


def _note(record, site, path, why):
  if record is not None:
    record[site.name] = (path, why)


def _fake(transform, x, state):
  if transform is None:
    return x
  state = state or {"params": {}, "stats": {}}
  return transform.fake(x, state["params"], state["stats"])


def _int_path_refusal(site: Site, act, qw: QArray) -> str | None:
  """Why ``site`` cannot run on int8 x int8 (None: it can)."""
  if act is None or not hasattr(act, "quantize"):
    return "activations are float (no activation quantizer with an integer form)"
  if getattr(act, "bits", 99) > 8 or qw.bits > 8:
    return f"{getattr(act, 'bits', '?')}-bit activations / {qw.bits}-bit weights exceed int8"
  if qw.scale.shape[-2] != 1:
    return "group-wise weight scales vary along the contraction"
  kind = getattr(getattr(act, "granularity", None), "kind", "tensor")
  if kind in ("channel", "group"):
    return f"per-{kind} activation scales vary along the contraction"
  x_index = 1 - site.weight_index
  if kind == "token" and (site.op != "dot_general" or site.contracting(x_index) != (
      len(site.shapes[x_index]) - 1,)):
    return "per-token activation scales need a dot contracting only the input's last axis"
  if site.op != "dot_general" and any(d != 1 for d in site.params.get("lhs_dilation", ())):
    return "transposed convolution (input dilation): dilation holes are not code 0"
  if site.op != "dot_general" and site.params.get("batch_group_count", 1) != 1:
    return "batch-grouped convolution (a weight-gradient form)"
  return None


def _integer_op(site: Site, act, x, act_state, qw: QArray):
  """int8 x int8 -> int32 op with the exact zero-point / offset corrections, then one rescale.

  The activation scale and zero point are per tensor, or (dots) per row: one per element of
  the input's non-contracting axes (a dynamic per-token quantizer), applied after the sum.
  """
  act_state = act_state or {"params": {}, "stats": {}}
  q = act.quantize(x, act_state["params"], act_state["stats"])
  w_index, x_index = site.weight_index, 1 - site.weight_index
  sx, zx = (_per_row(site, x_index, v) for v in (q.scale, q.zero_point))
  ox = 128 if q.hi > 127 else 0
  x_int = (q.codes - ox).astype(jnp.int8)
  codes = qw.codes()  # (K, N) int32, canonical view
  ow = 128 if codes_hi(qw) > 127 else 0
  w_int = _unview_codes(site, (codes - ow).astype(jnp.int8))
  zw = 0.0 if qw.zero_point is None else qw.zero_point.reshape(-1)
  dw = ow - zw  # per output channel (or scalar)
  dx = ox - zx  # per row (or scalar)
  k = math.prod(site.shapes[w_index][a] for a in site.contracting(w_index))
  col = jnp.sum(codes - ow, axis=0).astype(jnp.float32)  # (N,) sums of the int8 weight codes
  if site.op == "dot_general":
    operands = [None, None]
    operands[w_index], operands[x_index] = w_int, x_int
    acc = site.primitive.bind(*operands, **{**site.params, "preferred_element_type": jnp.int32})
    acc = acc.astype(jnp.float32)
    if not (np.isscalar(dw) and dw == 0):
      rows = jnp.sum(x_int.astype(jnp.int32), axis=site.contracting(x_index)).astype(jnp.float32)
      acc = acc + _to_out(site, x_index, rows) * _to_out(site, w_index, _per_n(site, dw))
    dx_out = _to_out(site, x_index, dx)
    acc = acc + dx_out * _to_out(site, w_index, _per_n(site, col))
    acc = acc + k * dx_out * _to_out(site, w_index, _per_n(site, dw))
    scale = _to_out(site, x_index, sx) * _to_out(site, w_index, _per_n(site, qw.scale.reshape(-1)))
    y = acc * scale
    nan_rows = jnp.any(jnp.isnan(x), axis=site.contracting(x_index))
    y = jnp.where(_to_out(site, x_index, nan_rows), jnp.nan, y)
  else:
    acc = _conv_int(site, x_int, w_int, ox, ow, zx, zw, col, k)
    bshape = [1] * acc.ndim
    bshape[site.params["dimension_numbers"].out_spec[1]] = -1
    y = _conv_nan(site, x, acc * sx * qw.scale.reshape(bshape if qw.scale.size > 1 else ()))
  return y.astype(_out_dtype(site))


def _per_row(site: Site, x_index: int, v):
  """An activation scale / zero point as a scalar or an array over the input's non-contracting
  axes (what the int8 op can apply after the sum); ValueError if it varies along the sum."""
  v = jnp.asarray(v, jnp.float32)
  if v.size == 1:
    return v.reshape(())
  shape = site.shapes[x_index]
  contract = site.contracting(x_index)
  if site.op != "dot_general" or v.ndim != len(shape) or any(v.shape[a] != 1 for a in contract):
    raise ValueError(f"site {site.name!r}: activation scale of shape {v.shape} for an input of "
                     f"shape {tuple(shape)} varies along the contracting axes {contract}; the "
                     "int8 path takes a per-tensor or (dots) per-row scale")
  v = jnp.broadcast_to(v, [1 if a in contract else d for a, d in enumerate(shape)])
  return v.reshape([d for a, d in enumerate(shape) if a not in contract])


def codes_hi(qw: QArray) -> int:
  return 2 ** (qw.bits - 1) - 1 if qw.signed else 2**qw.bits - 1


def _out_dtype(site):
  pet = site.params.get("preferred_element_type")
  return pet or jnp.result_type(*site.dtypes)


def _unview_codes(site: Site, codes_kn):
  _, unview = weight_view(site)
  return unview(codes_kn)


def _per_n(site: Site, v):
  """A per-output-channel vector (N,) of the weight view as an array over the weight's rest axes."""
  v = jnp.asarray(v, jnp.float32)
  shape = site.shapes[site.weight_index]
  rest = [a for a in range(len(shape)) if a not in site.contracting(site.weight_index)]
  if v.ndim == 0 or v.size == 1:
    return v.reshape((1,) * len(rest))
  return v.reshape(tuple(shape[a] for a in rest))


def _to_out(site: Site, index: int, arr):
  """An array over operand ``index``'s non-contracting axes, broadcast to the op's output."""
  if jnp.size(arr) == 1:
    return jnp.reshape(arr, ())
  shape = site.shapes[index]
  contract = site.contracting(index)
  axes = [a for a in range(len(shape)) if a not in contract]
  (lc, rc), (lb, rb) = site.params["dimension_numbers"]
  batch = (lb, rb)[index]
  nb = len(lb)
  n_lhs_free = len(site.shapes[0]) - len(lc) - len(lb)
  pos = {}
  for i, a in enumerate(batch):
    pos[a] = i
  free = [a for a in axes if a not in batch]
  offset = nb if index == 0 else nb + n_lhs_free
  for i, a in enumerate(free):
    pos[a] = offset + i
  out_rank = nb + n_lhs_free + (len(site.shapes[1]) - len(rc) - len(rb))
  order = sorted(axes, key=lambda a: pos[a])
  arr = jnp.transpose(arr, [axes.index(a) for a in order])
  full = [1] * out_rank
  for a in order:
    full[pos[a]] = shape[a]
  return arr.reshape(full)


def _conv_int(site: Site, x_int, w_int, ox, ow, zx, zw, col, k):
  """int8 conv with exact corrections; padding is explicit so padded inputs are code 0."""
  spec = site.params["dimension_numbers"]
  params = dict(site.params)
  x_shape = x_int.shape
  if ox:
    pads = [(0, 0, 0)] * x_int.ndim
    for dim, (lo, hi) in zip(spec.lhs_spec[2:], params["padding"]):
      pads[dim] = (lo, hi, 0)
    x_int = lax.pad(x_int, jnp.int8(-ox), pads)
    params["padding"] = tuple((0, 0) for _ in params["padding"])
  int_params = {**params, "preferred_element_type": jnp.int32}
  acc = site.primitive.bind(x_int, w_int, **int_params).astype(jnp.float32)
  bshape = [1] * acc.ndim
  bshape[spec.out_spec[1]] = -1
  per_out = lambda v: jnp.asarray(v, jnp.float32).reshape(bshape if np.size(v) > 1 else ())
  dw = ow - zw
  dx = ox - zx
  if not (np.isscalar(dw) and dw == 0):
    window = site.primitive.bind(x_int, jnp.ones_like(w_int), **int_params)
    acc = acc + window.astype(jnp.float32) * per_out(dw)
  acc = acc + dx * per_out(col) + k * dx * per_out(dw)
  return acc + _padding_correction(site, x_shape, w_int, zx, dw, col, k, per_out)


def _padding_correction(site: Site, x_shape, w_int, zx, dw, col, k, per_out):
  """What padded positions add back: they hold code 0, i.e. ``-zx`` (not 0.0) when the
  activation has a zero point; ``zx * sum over padded window entries of (w_int + dw)``."""
  if all(lo == hi == 0 for lo, hi in site.params["padding"]) or (np.isscalar(zx) and zx == 0):
    return 0.0
  spec = site.params["dimension_numbers"]
  w = w_int.astype(jnp.float32) + jnp.asarray(dw, jnp.float32).reshape(
      [-1 if i == spec.rhs_spec[0] else 1 for i in range(w_int.ndim)] if np.size(dw) > 1 else ())
  # The input is all ones: summing the kernel over its input features first gives the same
  # window sums from a one-image, one-channel conv (C times cheaper; groups need no split).
  one = list(x_shape)
  one[spec.lhs_spec[0]] = one[spec.lhs_spec[1]] = 1
  inside = site.primitive.bind(
      jnp.ones(one, jnp.float32), jnp.sum(w, axis=spec.rhs_spec[1], keepdims=True),
      **{**site.params, "preferred_element_type": jnp.float32, "feature_group_count": 1})
  total = per_out(col) + k * per_out(dw)
  return jnp.asarray(zx, jnp.float32).reshape(()) * (total - inside)


def _conv_nan(site: Site, x, y):
  """NaN wherever a NaN input falls in the output's receptive field (as float conv gives)."""
  # NaNs counted per feature group first: a conv with one input channel per group sees the
  # same windows (C / groups times cheaper than convolving every channel with ones).
  spec, groups = site.params["dimension_numbers"], site.params["feature_group_count"]
  c = spec.lhs_spec[1]
  nan = jnp.moveaxis(jnp.isnan(x).astype(jnp.float32), c, -1)
  nan = jnp.moveaxis(nan.reshape(*nan.shape[:-1], groups, -1).sum(-1), -1, c)
  w_shape = list(site.shapes[1])
  w_shape[spec.rhs_spec[1]] = 1
  hit = site.primitive.bind(nan, jnp.ones(w_shape, jnp.float32),
                            **{**site.params, "preferred_element_type": jnp.float32})
  return jnp.where(hit > 0, jnp.nan, y)


def _kernel_ok(site: Site) -> bool:
  (lc, rc), (lb, rb) = site.params["dimension_numbers"]
  return not lb and not rb


def _kernel_dot(site: Site, x, qw: QArray, backend):
  """``x . W`` through the kernel dispatcher: x as (M, K) in the weight view's K order."""
  from compressjax import kernels  # pylint: disable=g-import-not-at-top

  w_index, x_index = site.weight_index, 1 - site.weight_index
  x_contract = site.contracting(x_index)
  x_free = [a for a in range(x.ndim) if a not in x_contract]
  xm = jnp.transpose(x, (*x_free, *x_contract)).reshape(
      -1, math.prod(x.shape[a] for a in x_contract))
  y = kernels.matmul(xm, qw, backend=backend, out_dtype=jnp.float32)
  w_shape = site.shapes[w_index]
  w_rest = [w_shape[a] for a in range(len(w_shape)) if a not in site.contracting(w_index)]
  y = y.reshape(*(x.shape[a] for a in x_free), *w_rest)
  if w_index == 0:  # op output is (weight free..., x free...)
    nx = len(x_free)
    y = jnp.transpose(y, (*range(nx, y.ndim), *range(nx)))
  return y.astype(_out_dtype(site))


def serving_paths(model: Any, variables: dict, *args: Any, **kwargs: Any) -> dict[str, tuple]:
  """``{site: (path, why)}``: which path each site of a serving Linen model is served on."""
  record: dict = {}
  spec = model.compression
  tr = trace_linen(model, variables, *args, **kwargs)
  handler = serve_handler(spec, record)
  served = variables.get(SERVED, {})

  def probe():
    for site in tr.site_list:
      st = get_path(served, site.name)
      ins = [jnp.zeros(s, d) for s, d in zip(site.shapes, site.dtypes)]
      if st is not None and "weight" in st and site.stack:
        st = jax.tree_util.tree_map(lambda a: a[(0,) * len(site.stack)], st)
      handler(site, ins, st)
    return 0

  jax.eval_shape(probe)
  return record


def site_agreement(model: Any, variables: dict, *args: Any, **kwargs: Any) -> dict[str, dict]:
  """Served vs fake-quant arithmetic, site by site, for a serving Linen model (run eagerly).

  Runs the model as served and with ``serve_handler(fake_numerics=True)``, recording every
  weight site's input and output, then as served again with each site fed the fake-numerics
  input. Per site with an activation quantizer: ``code_diff_max`` and
  ``codes_differing`` (of ``codes``) compare the activation codes of the two runs;
  ``same_input_rel_err`` is max |served - fake| / max |fake| of the site's output given the same
  input. Sites inside ``scan`` / ``vmap`` (traced values) are skipped.
  """
  spec = model.compression

  def run(fake_numerics, feed=None):
    log: dict = {}

    def factory(spec):
      inner = serve_handler(spec, fake_numerics=fake_numerics)

      def handle(site, ins, state):
        if feed is not None and site.name in feed:
          ins = feed[site.name]
        out, new = inner(site, ins, state)
        if site.has_weight and not any(isinstance(a, jax.core.Tracer) for a in (*ins, out)):
          log[site.name] = (site, ins, out, state)
        return out, new

      return handle

    replayed = model.clone(compression=dataclasses.replace(spec, serve=factory))
    replayed.apply(variables, *args, **kwargs)
    return log

  served, fake = run(False), run(True)
  fed = run(False, {name: ins for name, (_, ins, _, _) in fake.items()})
  out = {}
  for name, (site, _, y_fake, state) in fake.items():
    entry = {"same_input_rel_err": float(jnp.max(jnp.abs(fed[name][2] - y_fake)) /
                                         (jnp.max(jnp.abs(y_fake)) + 1e-30))}
    rule = spec.rule_for(site)
    act = None if rule is None else rule.act
    act_state = (state or {}).get("input") or {"params": {}, "stats": {}}
    if act is not None and hasattr(act, "quantize"):
      x_index = 1 - site.weight_index
      codes = [act.quantize(run_log[name][1][x_index], act_state["params"],
                            act_state["stats"]).codes for run_log in (served, fake)]
      diff = jnp.abs(codes[0].astype(jnp.int32) - codes[1].astype(jnp.int32))
      entry.update(code_diff_max=int(jnp.max(diff)), codes_differing=int(jnp.sum(diff > 0)),
                   codes=int(diff.size))
    out[name] = entry
  return out


@dataclasses.dataclass(frozen=True)
class SizeReport:
  """Bytes of a variables tree: total, by kind, and per parameter path."""

  total_bytes: int
  qarray_bytes: int
  float_bytes: int
  per_leaf: dict[str, int]


def size_report(variables: Any, collections: tuple[str, ...] = ("params", SERVED)) -> SizeReport:
  """Storage size of ``variables`` (QArrays count their packed codes and scales); an NNX
  serving module (``cj.export(nnx_model)``) counts its parameters and served state."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from compressjax.core import nnx_compress  # pylint: disable=g-import-not-at-top

  if isinstance(variables, nnx_compress.CompressedModule):
    variables = {"params": nnx.state(variables.model, nnx.Param),
                 SERVED: variables.site_values(SERVED)}
  per_leaf: dict[str, int] = {}
  qbytes = fbytes = 0
  for col in collections:
    for path, leaf in flat_paths(variables.get(col, {}), is_leaf=lambda x: isinstance(x, QArray)):
      key = f"{col}/{path}"
      if isinstance(leaf, QArray):
        n = leaf.nbytes
        qbytes += n
      else:
        n = int(np.size(leaf)) * np.dtype(leaf.dtype).itemsize
        fbytes += n
      per_leaf[key] = n
  return SizeReport(qbytes + fbytes, qbytes, fbytes, per_leaf)
