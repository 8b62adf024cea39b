"""ONNX artifact: the serving model's jaxpr, equation by equation, as an ONNX graph.

Why the jaxpr and not the exported sites (``compressjax.core.trace``): the serving model's
jaxpr *is* the integer program. Export's serve handler has already rewritten every site into
int8 x int8 -> int32 ops plus exact zero-point corrections and a float rescale, and the jaxpr
also holds everything between the sites (BatchNorm, pooling, activations, a user's own einsums
and parameters) that a site-level walk would have to re-derive. One program, served by JAX or
by onnxruntime.

Integer sites: ``dot_general`` / ``conv_general_dilated`` on int8 operands accumulating in int32
become ``MatMulInteger`` / ``ConvInteger`` (int8 x int8 -> int32); the corrections and rescale
after them become ``Cast`` + ``Add`` + ``Mul``. Chosen over QuantizeLinear/DequantizeLinear
around float ops because it is exactly what JAX serves (int32 accumulation is exact, so the two
runtimes differ only in the float rounding of the rescale), it needs no pattern matching of the
quantize chain, and onnxruntime's CPU provider runs both ops on int8 x int8 (MLAS kernels).

Weights: the serving variables' leaves are known at export time. Every equation whose inputs
are all known is evaluated once with JAX (constant folding), so the serving program's weight
preprocessing (unpacking QArray codes, removing the unsigned-storage offset, code column sums,
transposes into ONNX layouts) runs here, and the initializers are the int8 codes the integer ops
read (4-bit codes become one int8 per code: twice their packed size) and folded float scales; a
folded float array holding only integers in int8's range (codes a float op reads) is stored as
int8 and cast back in the graph (onnxruntime folds the cast once, at load). A
broadcast that would turn a scalar into a large constant (the all-ones kernel of the NaN-mask
conv) stays in the graph as ``Expand``.

The batch (first) dimension of the graph's input and output is dynamic ("batch"): the program
is traced with a symbolic batch (``jax.export.symbolic_shape``) and every shape that depends on
it (reshapes, broadcasts, slices) is computed in the graph from the input's ``Shape``; the other
dimensions are the example input's.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

OPSET = 17
BATCH = "b"  # the symbolic batch dimension of the traced program
IR_VERSION = 8
_EXPAND_BYTES = 1024  # a broadcast of one value to more bytes than this stays an Expand node
_INLINE = ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
           "custom_vjp_call_jaxpr", "remat", "checkpoint")
_IDENTITY = ("stop_gradient", "copy", "copy_p", "optimization_barrier")


@dataclasses.dataclass(frozen=True, eq=False)
class _Known:
  """A value known at export time (a weight or a constant), with a name hint for initializers."""

  value: np.ndarray
  hint: str


class _Builder:
  """Collects ONNX nodes and initializers; values are ``_Known`` or graph tensor names."""

  def __init__(self):
    from onnx import helper, numpy_helper  # pylint: disable=g-import-not-at-top

    self.helper, self.numpy_helper = helper, numpy_helper
    self.nodes: list = []
    self.initializers: list = []
    self._used: set[str] = set()
    self._consts: dict = {}
    self._batch: str | None = None

  def name(self, hint: str) -> str:
    name, i = hint, 0
    while name in self._used:
      i += 1
      name = f"{hint}:{i}"
    self._used.add(name)
    return name

  def tensor(self, v) -> str:
    """The graph name of ``v``; a known value becomes an initializer (once)."""
    if isinstance(v, str):
      return v
    small = v.value.size <= 16
    key = (v.value.dtype.str, v.value.shape, v.value.tobytes()) if small else id(v)
    if key not in self._consts:
      value = np.asarray(v.value)
      if small or not _int8_valued(value):
        name = self.name(v.hint)
        self.initializers.append(self.numpy_helper.from_array(value, name))
      else:  # integer codes held as floats: stored as int8, cast back once at load
        codes = self.name(v.hint)
        self.initializers.append(self.numpy_helper.from_array(value.astype(np.int8), codes))
        name = self.cast(codes, value.dtype)
      self._consts[key] = (name, v)  # holds v, so id(v) stays unique
    return self._consts[key][0]

  def const(self, value, dtype=np.int64) -> str:
    return self.tensor(_Known(np.asarray(value, dtype), "const"))

  def dims(self, shape) -> str:
    """An int64 shape tensor; a dimension ``a * batch + c`` is computed from the input's."""
    if not any(_is_symbolic(d) for d in shape):
      return self.const([int(d) for d in shape])
    parts = []
    for d in shape:
      if not _is_symbolic(d):
        parts.append(self.const([int(d)]))
        continue
      if self._batch is None:
        self._batch = self.op("Shape", ["input"], start=0, end=1)
      a, c = _linear_in_batch(d)
      part = self._batch if a == 1 else self.op("Mul", [self._batch, self.const([a])])
      parts.append(part if c == 0 else self.op("Add", [part, self.const([c])]))
    return self.op("Concat", parts, axis=0)

  def op(self, op_type: str, inputs, n_out: int = 1, **attrs):
    outs = [self.name(f"{op_type.lower()}{len(self.nodes)}") for _ in range(n_out)]
    self.nodes.append(self.helper.make_node(op_type, [self.tensor(v) for v in inputs], outs,
                                            **attrs))
    return outs if n_out > 1 else outs[0]

  def cast(self, v, dtype):
    return self.op("Cast", [v], to=self.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

  def transpose(self, v, perm):
    perm = [int(p) for p in perm]
    if perm == sorted(perm):
      return v
    if isinstance(v, _Known):
      return _Known(np.transpose(v.value, perm), v.hint)
    return self.op("Transpose", [v], perm=perm)

  def reshape(self, v, shape, from_shape):
    shape = tuple(d if _is_symbolic(d) else int(d) for d in shape)
    if len(shape) == len(from_shape) and all(_same(a, b) for a, b in zip(shape, from_shape)):
      return v
    if isinstance(v, _Known):
      return _Known(v.value.reshape(shape), v.hint)
    return self.op("Reshape", [v, self.dims(shape)])


def _int8_valued(value: np.ndarray) -> bool:
  """A float array whose values are all integers in int8's range (e.g. weight codes)."""
  return (value.dtype.kind == "f" and bool(np.all(np.isfinite(value)))
          and bool(np.all(value == np.round(value))) and -128 <= value.min() and value.max() <= 127)


def _is_symbolic(d) -> bool:
  return not isinstance(d, (int, np.integer))


def _same(a, b) -> bool:
  return a == b if _is_symbolic(a) == _is_symbolic(b) else False


def _linear_in_batch(d) -> tuple[int, int]:
  """``(a, c)`` with ``d == a * batch + c`` for a symbolic dimension ``d``."""
  evaluate = getattr(d, "_evaluate", None)
  if evaluate is None:
    raise NotImplementedError(f"save_onnx: cannot evaluate the symbolic dimension {d}")
  at = lambda v: int(evaluate({BATCH: v}))
  a, c = at(2) - at(1), 2 * at(1) - at(2)
  if at(3) != 3 * a + c:
    raise NotImplementedError(f"save_onnx: dimension {d} is not linear in the batch size")
  return a, c


# ------------------------------------------------------------------------------------------------
# The walk.


def _walk(b: _Builder, jaxpr, consts, args):
  env: dict = {}

  def read(v):
    if isinstance(v, jcore.Literal):
      return _Known(np.asarray(v.val, v.aval.dtype), "literal")
    return env[v]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    outs = _equation(b, eqn, [read(v) for v in eqn.invars])
    for var, val in zip(eqn.outvars, outs):
      if not isinstance(var, jcore.DropVar):
        env[var] = val
  return [read(v) for v in jaxpr.outvars]


def _equation(b: _Builder, eqn, ins):
  name = eqn.primitive.name
  if name in _INLINE:
    inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    jaxpr, consts = (inner.jaxpr, inner.consts) if hasattr(inner, "consts") else (inner, ())
    return _walk(b, jaxpr, [_Known(np.asarray(c), "const") for c in consts], ins)
  if name in _IDENTITY:
    return ins
  if all(isinstance(v, _Known) for v in ins) and not _batch_sized(eqn) and not _expands(eqn, ins):
    outs = eqn.primitive.bind(*(v.value for v in ins), **eqn.params)
    outs = outs if eqn.primitive.multiple_results else [outs]
    hint = next((v.hint for v in ins if v.hint not in ("literal", "const")), "const")
    return [_Known(np.asarray(o), hint) for o in outs]
  rule = _RULES.get(name)
  if rule is None:
    raise NotImplementedError(
        f"save_onnx: primitive {name!r} has no ONNX lowering (in `{str(eqn)[:200]}`); supported: "
        f"{', '.join(sorted({*_RULES, *_INLINE, *_IDENTITY}))}")
  out = rule(b, eqn, *ins)
  return out if eqn.primitive.multiple_results else [out]


def _batch_sized(eqn) -> bool:
  """An output whose shape depends on the batch size: it is computed in the graph."""
  return any(_is_symbolic(d) for v in eqn.outvars for d in v.aval.shape)


def _expands(eqn, ins) -> bool:
  """A broadcast of one value to a large array: keep it in the graph rather than store it."""
  if eqn.primitive.name != "broadcast_in_dim" or ins[0].value.size != 1:
    return False
  aval = eqn.outvars[0].aval
  return math.prod(aval.shape) * np.dtype(aval.dtype).itemsize > _EXPAND_BYTES


def _in(eqn, i=0):
  return eqn.invars[i].aval


def _out(eqn):
  return eqn.outvars[0].aval


def _to_out_dtype(b, eqn, y, dtype):
  want = np.dtype(_out(eqn).dtype)
  return y if np.dtype(dtype) == want else b.cast(y, want)


# ------------------------------------------------------------------------------------------------
# Lowerings: (builder, eqn, *inputs) -> output.


def _simple(op_type):
  return lambda b, eqn, *xs: b.op(op_type, xs)


def _not_of(op_type):
  return lambda b, eqn, x, y: b.op("Not", [b.op(op_type, [x, y])])


def _rsqrt(b, eqn, x):
  return b.op("Reciprocal", [b.op("Sqrt", [x])])


def _square(b, eqn, x):
  return b.op("Mul", [x, x])


def _is_finite(b, eqn, x):
  return b.op("Not", [b.op("Or", [b.op("IsNaN", [x]), b.op("IsInf", [x])])])


def _round(b, eqn, x):
  if int(eqn.params["rounding_method"]) == 1:  # TO_NEAREST_EVEN, as ONNX Round
    return b.op("Round", [x])
  half = np.asarray(0.5, _in(eqn).dtype)  # AWAY_FROM_ZERO
  mag = b.op("Floor", [b.op("Add", [b.op("Abs", [x]), b.const(half, half.dtype)])])
  return b.op("Mul", [b.op("Sign", [x]), mag])


def _integer_pow(b, eqn, x):
  y = eqn.params["y"]
  if y == 0:
    return b.op("Expand", [b.const(1, _in(eqn).dtype), b.dims(_out(eqn).shape)])
  acc, base, n = None, x, abs(y)
  while n:
    if n & 1:
      acc = base if acc is None else b.op("Mul", [acc, base])
    n >>= 1
    if n:
      base = b.op("Mul", [base, base])
  return b.op("Reciprocal", [acc]) if y < 0 else acc


def _clamp(b, eqn, lo, x, hi):
  if _in(eqn, 0).shape == () and _in(eqn, 2).shape == ():
    return b.op("Clip", [x, lo, hi])
  return b.op("Min", [b.op("Max", [x, lo]), hi])


def _select_n(b, eqn, pred, *cases):
  if np.dtype(_in(eqn).dtype) == np.bool_:
    return b.op("Where", [pred, cases[1], cases[0]]) if len(cases) == 2 else cases[0]
  out = cases[0]
  for i, case in enumerate(cases[1:], 1):
    hit = b.op("Equal", [pred, b.const(i, _in(eqn).dtype)])
    out = b.op("Where", [hit, case, out])
  return out


def _convert(b, eqn, x):
  return _to_out_dtype(b, eqn, x, _in(eqn).dtype)


def _reduce_precision(b, eqn, x):
  bits = (eqn.params["exponent_bits"], eqn.params["mantissa_bits"])
  info = np.finfo(_in(eqn).dtype)
  if bits[0] >= info.nexp and bits[1] >= info.nmant:
    return x
  from onnx import TensorProto  # pylint: disable=g-import-not-at-top

  narrow = {(8, 7): TensorProto.BFLOAT16, (5, 10): TensorProto.FLOAT16}.get(bits)
  if narrow is None:
    raise NotImplementedError(f"save_onnx: reduce_precision to exponent/mantissa bits {bits} "
                              "(only bfloat16 (8, 7) and float16 (5, 10) have an ONNX type)")
  return b.cast(b.op("Cast", [x], to=narrow), _in(eqn).dtype)


def _reshape(b, eqn, x, *dynamic):
  if dynamic or eqn.params.get("dimensions") is not None:
    raise NotImplementedError("save_onnx: reshape with dynamic shape or `dimensions`")
  return b.reshape(x, _out(eqn).shape, _in(eqn).shape)


def _reshape_to_out(b, eqn, x):
  return b.reshape(x, _out(eqn).shape, _in(eqn).shape)


def _transpose(b, eqn, x):
  return b.transpose(x, eqn.params["permutation"])


def _broadcast_in_dim(b, eqn, x, *dynamic):
  if dynamic:
    raise NotImplementedError("save_onnx: broadcast_in_dim with dynamic shape")
  shape = tuple(_out(eqn).shape)
  middle = [1] * len(shape)
  for i, d in enumerate(eqn.params["broadcast_dimensions"]):
    middle[d] = _in(eqn).shape[i]
  x = b.reshape(x, middle, _in(eqn).shape)
  if all(_same(a, d) for a, d in zip(middle, shape)):
    return x
  return b.op("Expand", [x, b.dims(shape)])


def _concatenate(b, eqn, *xs):
  return b.op("Concat", xs, axis=int(eqn.params["dimension"]))


def _pad(b, eqn, x, value):
  config = eqn.params["padding_config"]
  if any(interior for _, _, interior in config):
    raise NotImplementedError("save_onnx: pad with interior padding")
  pads = [lo for lo, _, _ in config] + [hi for _, hi, _ in config]
  return b.op("Pad", [x, b.const(pads), value], mode="constant")


def _slice(b, eqn, x):
  p = eqn.params
  steps = p["strides"] or (1,) * len(p["start_indices"])
  axes = range(len(steps))
  return b.op("Slice", [x, b.dims(p["start_indices"]), b.dims(p["limit_indices"]),
                        b.const(list(axes)), b.const(steps)])


def _split(b, eqn, x):
  sizes = eqn.params["sizes"]
  return b.op("Split", [x, b.const(sizes)], n_out=len(sizes), axis=int(eqn.params["axis"]))


def _reduce(op_type):
  def rule(b, eqn, x):
    axes = [int(a) for a in eqn.params["axes"]]
    if not axes:
      return x
    is_bool = np.dtype(_in(eqn).dtype) == np.bool_
    if is_bool:
      x = b.cast(x, np.int32)
    if op_type == "ReduceSum":
      y = b.op(op_type, [x, b.const(axes)], keepdims=0)
    else:
      y = b.op(op_type, [x], axes=axes, keepdims=0)
    return b.cast(y, np.bool_) if is_bool else y

  return rule


def _arg(op_type):
  def rule(b, eqn, x):
    (axis,) = eqn.params["axes"]
    y = b.op(op_type, [x], axis=int(axis), keepdims=0)
    return _to_out_dtype(b, eqn, y, np.int64)

  return rule


def _is_int8(aval) -> bool:
  return np.dtype(aval.dtype) in (np.dtype(np.int8), np.dtype(np.uint8))


def _integer_site(eqn) -> bool:
  return (_is_int8(_in(eqn, 0)) and _is_int8(_in(eqn, 1))
          and np.dtype(_out(eqn).dtype) == np.int32)


def _dot_general(b, eqn, lhs, rhs):
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  ls, rs = _in(eqn, 0).shape, _in(eqn, 1).shape
  lf = [a for a in range(len(ls)) if a not in lc and a not in lb]
  rf = [a for a in range(len(rs)) if a not in rc and a not in rb]
  batch = [ls[a] for a in lb]
  m, k, n = (math.prod(ls[a] for a in lf), math.prod(ls[a] for a in lc),
             math.prod(rs[a] for a in rf))
  lhs = b.reshape(b.transpose(lhs, [*lb, *lf, *lc]), (*batch, m, k),
                  [ls[a] for a in (*lb, *lf, *lc)])
  rhs = b.reshape(b.transpose(rhs, [*rb, *rc, *rf]), (*batch, k, n),
                  [rs[a] for a in (*rb, *rc, *rf)])
  if _integer_site(eqn):
    y, dtype = b.op("MatMulInteger", [lhs, rhs]), np.int32
  else:
    y, dtype = b.op("MatMul", [lhs, rhs]), np.result_type(_in(eqn, 0).dtype, _in(eqn, 1).dtype)
  y = b.reshape(y, _out(eqn).shape, (*batch, m, n))
  return _to_out_dtype(b, eqn, y, dtype)


def _conv(b, eqn, x, w):
  p = eqn.params
  if any(d != 1 for d in p["lhs_dilation"]):
    raise NotImplementedError("save_onnx: conv_general_dilated with input dilation "
                              f"{p['lhs_dilation']} (a transposed conv) has no lowering yet")
  if p["batch_group_count"] != 1 or any(lo < 0 or hi < 0 for lo, hi in p["padding"]):
    raise NotImplementedError("save_onnx: conv_general_dilated with batch_group_count > 1 or "
                              "negative padding")
  dn = p["dimension_numbers"]
  x = b.transpose(x, dn.lhs_spec)
  w = b.transpose(w, dn.rhs_spec)
  kernel = [_in(eqn, 1).shape[d] for d in dn.rhs_spec[2:]]
  attrs = dict(kernel_shape=kernel, strides=list(p["window_strides"]),
               dilations=list(p["rhs_dilation"]), group=int(p["feature_group_count"]),
               pads=[lo for lo, _ in p["padding"]] + [hi for _, hi in p["padding"]])
  if _integer_site(eqn):
    y, dtype = b.op("ConvInteger", [x, w], **attrs), np.int32
  else:
    y, dtype = b.op("Conv", [x, w], **attrs), np.result_type(_in(eqn, 0).dtype)
  y = b.transpose(y, np.argsort(dn.out_spec))
  return _to_out_dtype(b, eqn, y, dtype)


def _max_pool(b, eqn, x):
  p = eqn.params
  if any(d != 1 for d in p["base_dilation"]):
    raise NotImplementedError("save_onnx: reduce_window_max with base dilation")
  shape = _in(eqn).shape
  active = [a for a in range(len(shape)) if (p["window_dimensions"][a], p["window_strides"][a],
                                             tuple(p["padding"][a]), p["window_dilation"][a])
            != (1, 1, (0, 0), 1)]
  if not active:
    return x
  passive = [a for a in range(len(shape)) if a not in active]
  perm = [*passive, *active]
  lead = math.prod(shape[a] for a in passive)
  x = b.reshape(b.transpose(x, perm), (lead, 1, *(shape[a] for a in active)),
                [shape[a] for a in perm])
  y = b.op("MaxPool", [x], kernel_shape=[p["window_dimensions"][a] for a in active],
           strides=[p["window_strides"][a] for a in active],
           dilations=[p["window_dilation"][a] for a in active],
           pads=[p["padding"][a][0] for a in active] + [p["padding"][a][1] for a in active])
  out = _out(eqn).shape
  y = b.reshape(y, [out[a] for a in perm], (lead, 1, *(out[a] for a in active)))
  return b.transpose(y, np.argsort(perm))


_RULES = {
    **{k: _simple(v) for k, v in dict(
        add="Add", sub="Sub", mul="Mul", div="Div", max="Max", min="Min", pow="Pow", neg="Neg",
        exp="Exp", log="Log", tanh="Tanh", logistic="Sigmoid", sqrt="Sqrt", abs="Abs",
        sign="Sign", floor="Floor", ceil="Ceil", erf="Erf", sin="Sin", cos="Cos", eq="Equal",
        lt="Less", gt="Greater", le="LessOrEqual", ge="GreaterOrEqual", xor="Xor").items()},
    "and": _simple("And"), "or": _simple("Or"), "not": _simple("Not"), "ne": _not_of("Equal"),
    "rsqrt": _rsqrt, "square": _square, "is_finite": _is_finite, "round": _round,
    "integer_pow": _integer_pow, "clamp": _clamp, "select_n": _select_n,
    "convert_element_type": _convert, "reduce_precision": _reduce_precision,
    "reshape": _reshape, "squeeze": _reshape_to_out, "expand_dims": _reshape_to_out,
    "transpose": _transpose, "broadcast_in_dim": _broadcast_in_dim,
    "concatenate": _concatenate, "pad": _pad, "slice": _slice, "split": _split,
    "reduce_sum": _reduce("ReduceSum"), "reduce_max": _reduce("ReduceMax"),
    "reduce_min": _reduce("ReduceMin"), "reduce_prod": _reduce("ReduceProd"),
    "reduce_or": _reduce("ReduceMax"), "reduce_and": _reduce("ReduceMin"),
    "argmax": _arg("ArgMax"), "argmin": _arg("ArgMin"),
    "dot_general": _dot_general, "conv_general_dilated": _conv, "reduce_window_max": _max_pool,
}


# ------------------------------------------------------------------------------------------------
# Entry points.


def to_onnx(serving_model: Any, serving_vars: dict | None, example_input: Any):
  """The ``onnx.ModelProto`` of a serving model (Linen model + variables, or an NNX module)."""
  import onnx  # pylint: disable=g-import-not-at-top
  from onnx import helper  # pylint: disable=g-import-not-at-top

  from compressjax.artifacts.serving_fn import serving_function  # pylint: disable=g-import-not-at-top

  fn, leaves, names = serving_function(serving_model, serving_vars)
  rest = ", ".join(str(d) for d in example_input.shape[1:])
  x = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"{BATCH}, {rest}" if rest else BATCH),
                           example_input.dtype)
  closed = jax.make_jaxpr(fn)(leaves, x)
  b = _Builder()
  b.name("input")
  args = [_Known(v, n) for v, n in zip(leaves, names)] + ["input"]
  outs = _walk(b, closed.jaxpr, [_Known(np.asarray(c), "const") for c in closed.consts], args)
  out_names = ["output"] if len(outs) == 1 else [f"output{i}" for i in range(len(outs))]
  for name, value in zip(out_names, outs):
    b.nodes.append(helper.make_node("Identity", [b.tensor(value)], [name]))
  info = lambda n, a: helper.make_tensor_value_info(
      n, helper.np_dtype_to_tensor_dtype(np.dtype(a.dtype)),
      ["batch" if _is_symbolic(d) else int(d) for d in a.shape])
  graph = helper.make_graph(b.nodes, "compressjax_serving", [info("input", x)],
                            [info(n, v.aval) for n, v in zip(out_names, closed.jaxpr.outvars)],
                            b.initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                            producer_name="compressjax", ir_version=IR_VERSION)
  onnx.checker.check_model(model)
  return model


def save_onnx(serving_model: Any, serving_vars: dict | None, example_input: Any, path: str) -> int:
  """Writes the ONNX graph of a serving model to ``path``; returns the file size in bytes."""
  model = to_onnx(serving_model, serving_vars, example_input)
  with open(path, "wb") as f:
    f.write(model.SerializeToString())
  return os.path.getsize(path)
