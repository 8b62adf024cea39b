"""AdaBits (Jin, Yang & Liao, 2020): one model, several bit-widths.

One shared set of conv/dense weights. Per bit-width ``b`` in ``bits_list``:

* its own quantizer state at every site (the "switchable clipping level", S-CL: one PACT alpha
  per bit-width), held by :class:`Switchable` as a dict keyed by ``str(bits)``
  (``params["compressjax"]["conv1"]["kernel"]["input"] == {"8": {"alpha": ..}, "4": ...}``), and
* its own BatchNorm statistics and affine parameters ("switchable BN"), held by
  :class:`SwitchableBN`, an extra interceptor that renames every ``nn.BatchNorm`` variable to
  ``<name>_b<bits>`` for the call, so the user's model is unmodified.

All switches exist from ``init``; the active bit-width is a static field, so ``at_bits(model, b)``
is the same model (same variables) running at ``b`` (one compilation per bit-width). Joint
training (:func:`compressjax.train.adabits_step.make_joint_step`) sums the losses over
``bits_list`` inside one ``value_and_grad`` and takes one optimizer step. Start from a float
model with :func:`init_from_float`, which copies its BatchNorm into every switch.

Baseline "direct adaptation": a model trained at one bit-width run at another, with its switch
copied (:func:`copy_switch`), optionally after :func:`recalibrate_bn`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax

from compressjax.core.calibrate import calibrate
from compressjax.core.compress import SITE_PARAMS, STATS, with_compression
from compressjax.core.rule import Rule, with_edges
from compressjax.core.sites import discover
from compressjax.mixed.common import (DEFAULT_METHOD, Method, compress_on, edge_rules,
                                      quantizers, start_from_float)
from compressjax.quant.base import Quantizer

Array = jax.Array
State = dict[str, Array]


def suffix(bits: int) -> str:
  """The name suffix of a bit-width's BatchNorm switch: ``scale`` -> ``scale_b4``."""
  return f"_b{bits}"


def key(bits: int) -> str:
  """The key of a bit-width's state in a :class:`Switchable`'s state dicts: ``"4"``."""
  return str(bits)


def check_bits_list(bits_list: Sequence[int], bit_range: tuple[int, int], owner: str = "bits_list") -> tuple[int, ...]:
  """``bits_list`` as a tuple; ValueError unless it is non-empty, strictly decreasing and in range."""
  bits = tuple(bits_list)
  if not bits:
    raise ValueError(f"{owner} is empty; give bit-widths from high to low, e.g. (8, 4, 3, 2)")
  bad = [b for b in bits if not isinstance(b, int) or isinstance(b, bool)]
  if bad:
    raise TypeError(f"{owner}={bits} holds non-integers {bad}; bit-widths are ints")
  if len(set(bits)) != len(bits):
    raise ValueError(f"{owner}={bits} has duplicates; each bit-width may appear once")
  if list(bits) != sorted(bits, reverse=True):
    raise ValueError(
        f"{owner}={bits} is not sorted from high to low; use {tuple(sorted(bits, reverse=True))}"
    )
  lo, hi = bit_range
  out = [b for b in bits if not lo <= b <= hi]
  if out:
    raise ValueError(f"{owner}={bits}: {out} outside the quantizer's allowed range {lo}..{hi}")
  return bits


@dataclasses.dataclass(frozen=True)
class Switchable:
  """A transform holding one quantizer per bit-width; only ``active`` runs.

  State is nested by bit-width: ``params = {"8": params_8, "4": params_4, ...}`` (keys
  ``str(bits)``), stats likewise; every switch's state is created at ``init``, ``update``
  touches only the active one's.

  Attributes:
    quantizers: one per bit-width, in strictly decreasing bit order.
    active: the bit-width in use (one of the quantizers' bits).
  """

  quantizers: tuple[Quantizer, ...]
  active: int

  def __post_init__(self):
    if not self.quantizers:
      raise ValueError("Switchable needs at least one quantizer (bits_list is empty)")
    check_bits_list(self.bits_list, self.quantizers[0].bit_range(), "Switchable bits")
    if self.active not in self.bits_list:
      raise ValueError(
          f"Switchable: active={self.active!r} is not one of the bit-widths {self.bits_list}")

  @property
  def bits_list(self) -> tuple[int, ...]:
    return tuple(q.bits for q in self.quantizers)

  @property
  def bits(self) -> int:
    """The active bit-width (what ``core.bits_of`` and export see)."""
    return self.active

  def at(self, bits: int) -> Switchable:
    return dataclasses.replace(self, active=bits)

  def init(self, x: Array) -> tuple[dict, dict]:
    params, stats = {}, {}
    for q in self.quantizers:
      params[key(q.bits)], stats[key(q.bits)] = q.init(x)
    return params, stats

  def update(self, x: Array, params: dict, stats: dict) -> dict:
    q, k = self._active, key(self.active)
    p, s = self._own(x, params, stats)
    return {**stats, k: q.update(x, p, s)}

  def fake(self, x: Array, params: dict, stats: dict) -> Array:
    return self._active.fake(x, *self._own(x, params, stats))

  def quantize(self, x: Array, params: dict, stats: dict):
    return self._active.quantize(x, *self._own(x, params, stats))

  def export(self, x: Array, params: dict, stats: dict):
    return self._active.export(x, *self._own(x, params, stats))

  def _own(self, x: Array, params: dict, stats: dict) -> tuple[Any, Any]:
    """The active switch's ``(params, stats)``. A state without leaves may be missing (the
    core's export passes ``{}`` for an operand state that has no leaves): its empty structure
    is rebuilt from the quantizer's ``init``."""
    k = key(self.active)
    params, stats = params or {}, stats or {}
    if k in params and k in stats:
      return params[k], stats[k]
    empty_p, empty_s = jax.eval_shape(self._active.init, x)
    p, s = params.get(k, empty_p), stats.get(k, empty_s)
    for what, v in (("params", p), ("stats", s)):
      if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(v)):
        raise ValueError(f"Switchable: no {what} for its {self.active}-bit switch (keys "
                         f"{sorted((params if what == 'params' else stats))}); initialise the "
                         "model with the same bits_list")
    return p, s

  @property
  def _active(self) -> Quantizer:
    return self.quantizers[self.bits_list.index(self.active)]


@contextlib.contextmanager
def _shadowed(module: nn.Module, attrs: dict[str, Any]):
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


@dataclasses.dataclass(frozen=True)
class SwitchableBN:
  """Interceptor: every ``nn.BatchNorm`` call keeps one set of variables per bit-width.

  For the duration of the call the module's ``param`` and ``variable`` are shadowed so that
  ``scale``/``bias``/``mean``/``var`` become ``<name>_b<bits>``; all switches are created (at
  init) or looked up, and the active one is used, so only its statistics are updated.
  Pass it to ``compress(model, rules, interceptors=(SwitchableBN(...),))``.
  """

  bits: tuple[int, ...]
  active: int

  def __post_init__(self):
    if self.active not in self.bits:
      raise ValueError(f"SwitchableBN: active={self.active!r} is not one of {self.bits}")

  def at(self, bits: int) -> SwitchableBN:
    return dataclasses.replace(self, active=bits)

  # NNX: the compressed module keeps a copy of every nnx.BatchNorm's variables per bit-width
  # and swaps the active one in for each call (compressjax.core.nnx_compress.switched_in).
  @property
  def switch_keys(self) -> tuple[str, ...]:
    return tuple(key(b) for b in self.bits)

  @property
  def active_key(self) -> str:
    return key(self.active)

  def switched_module(self, module: Any) -> bool:
    from flax import nnx  # pylint: disable=g-import-not-at-top

    return isinstance(module, nnx.BatchNorm)

  def __call__(self, next_fun, args, kwargs, context):
    module = context.module
    if not (isinstance(module, nn.BatchNorm) and context.method_name == "__call__"):
      return next_fun(*args, **kwargs)
    read_param, read_variable = module.param, module.variable

    def param(name, *init_args, **init_kwargs):
      switches = {b: read_param(name + suffix(b), *init_args, **init_kwargs) for b in self.bits}
      return switches[self.active]

    def variable(col, name, *init_args, **init_kwargs):
      switches = {b: read_variable(col, name + suffix(b), *init_args, **init_kwargs)
                  for b in self.bits}
      return switches[self.active]

    with _shadowed(module, {"param": param, "variable": variable}):
      return next_fun(*args, **kwargs)


def adabits(
    model: nn.Module,
    bits_list: Sequence[int],
    x: Array,
    *,
    method: Method = DEFAULT_METHOD,
    edge_bits: int | None = 8,
) -> nn.Module:
  """``model`` with switchable quantizers and switchable BatchNorm, active at ``max(bits_list)``.

  Args:
    model: an unmodified float Linen or NNX model (NNX: transform state is created on ``x``
      from the model's weights; every ``nnx.BatchNorm`` gets a copy of its variables per
      bit-width, swapped in for the active one; train ``at_bits`` views, which share them).
    bits_list: bit-widths from high to low, e.g. ``(8, 4, 3, 2)`` (weights and activations).
    x: an example input (finds the sites; the first and last are the edges).
    method: the quantizers: a ``compressjax.quant.recipes`` name (``"sat"``, ``"dorefa_pact"``,
      ``"lsq"``), ``"sat_centered"`` (default) or ``(w_bits, a_bits) -> (weight, act)``.
    edge_bits: the first site's weights and the last site's weights and inputs stay at this
      fixed bit-width in every switch (None: float); the first site's input stays float.
  """
  weights, acts = zip(*(quantizers(method, b, b) for b in _probe_bits(bits_list, method)))
  bits = tuple(q.bits for q in weights)
  w, a = Switchable(weights, bits[0]), Switchable(acts, bits[0])
  sites = discover(model, x)
  if edge_bits is None:
    rules = with_edges([Rule(pattern=".", weight=w, act=a)], sites)
  else:
    rules = edge_rules(sites, w, a, method=method, edge_bits=edge_bits)
  return compress_on(model, rules, x, interceptors=(SwitchableBN(bits, bits[0]),))


def _probe_bits(bits_list: Sequence[int], method: Method) -> tuple[int, ...]:
  """Validates ``bits_list`` against ``method``'s weight and activation quantizers."""
  probe = quantizers(method, 8, 8)
  lo = max(q.bit_range()[0] for q in probe)
  hi = min(q.bit_range()[1] for q in probe)
  return check_bits_list(bits_list, (lo, hi))


def bits_of(model: nn.Module) -> tuple[int, ...]:
  """The ``bits_list`` of an AdaBits model (from its SwitchableBN interceptor)."""
  spec = getattr(model, "compression", None)
  for interceptor in () if spec is None else spec.interceptors:
    if isinstance(interceptor, SwitchableBN):
      return interceptor.bits
  raise TypeError(f"{type(model).__name__} is not an AdaBits model (build it with adabits())")


def at_bits(model: nn.Module, bits: int) -> nn.Module:
  """The same AdaBits model (same variables) running at ``bits``."""
  allowed = bits_of(model)
  if bits not in allowed:
    raise ValueError(f"at_bits: bits={bits!r} is not one of the model's bit-widths {allowed}")
  spec = model.compression
  rules = tuple(
      dataclasses.replace(
          r,
          weight=r.weight.at(bits) if isinstance(r.weight, Switchable) else r.weight,
          act=r.act.at(bits) if isinstance(r.act, Switchable) else r.act,
          rhs=r.rhs.at(bits) if isinstance(r.rhs, Switchable) else r.rhs,
      )
      for r in spec.rules
  )
  interceptors = tuple(i.at(bits) if isinstance(i, SwitchableBN) else i for i in spec.interceptors)
  return with_compression(model, rules=rules, interceptors=interceptors)


def init_from_float(model: nn.Module, float_variables: dict, x: Array, **kwargs: Any) -> dict:
  """AdaBits variables from a float model's: its BatchNorm copied into every switch.

  ``kwargs`` go to :func:`compressjax.mixed.common.start_from_float` (PACT init).
  """
  return start_from_float(model, float_variables, x, **kwargs)


def copy_switch(variables: Any, src: int, dst: int) -> Any:
  """``variables`` with the ``src``-bit switch also written as the ``dst``-bit one.

  BatchNorm: every ``<name>_b<src>`` leaf is copied to ``<name>_b<dst>``; transform state
  (``params["compressjax"]``, ``quant_stats``): every ``"<src>"`` entry of a switch dict is
  copied to ``"<dst>"``. Builds the direct-adaptation baseline: a model trained at ``src`` bits
  run at ``dst`` with the same BatchNorm and clip levels. A compressed NNX model is copied in
  place (its BatchNorm switches and transform state) and returned.
  """
  from compressjax.core.nnx_compress import CompressedModule  # pylint: disable=g-import-not-at-top

  if isinstance(variables, CompressedModule):
    for path, bn in variables.switches[key(src)].items():
      for attr, var in bn.items():
        variables.switches[key(dst)][path][attr].set_value(var.get_value())
    for kind in ("params", "stats"):
      variables.set_site_values(_copy_state_switch(variables.site_values(kind), src, dst), kind)
    return variables
  if not isinstance(variables, dict):
    return variables
  out = {}
  for col, tree in variables.items():
    if col == STATS:
      out[col] = _copy_state_switch(tree, src, dst)
    elif col == "params" and isinstance(tree, dict):
      out[col] = {k: (_copy_state_switch(v, src, dst) if k == SITE_PARAMS
                      else _copy_bn_switch(v, src, dst)) for k, v in tree.items()}
    else:
      out[col] = _copy_bn_switch(tree, src, dst)
  return out


def _copy_bn_switch(tree: Any, src: int, dst: int) -> Any:
  if not isinstance(tree, dict):
    return tree
  out = {k: _copy_bn_switch(v, src, dst) for k, v in tree.items()}
  end = suffix(src)
  for k, v in tree.items():
    if k.endswith(end) and not isinstance(v, dict):
      out[k[: -len(end)] + suffix(dst)] = v
  return out


def _copy_state_switch(tree: Any, src: int, dst: int) -> Any:
  if isinstance(tree, (tuple, list)):
    return type(tree)(_copy_state_switch(v, src, dst) for v in tree)
  if not isinstance(tree, dict):
    return tree
  out = {k: _copy_state_switch(v, src, dst) for k, v in tree.items()}
  if key(src) in tree:
    out[key(dst)] = out[key(src)]
  return out


def recalibrate_bn(model: nn.Module, variables: dict, images: Iterable[Array]) -> dict:
  """``variables`` with the active switch's BatchNorm statistics re-estimated on ``images``.

  Runs the model in training mode with only ``batch_stats`` mutable (no gradient, quantizer
  state untouched); BatchNorm's running average moves with its own momentum, so pass enough
  batches (tens) for the old statistics to fade. A compressed NNX model (``variables=None``)
  is recalibrated in place (its active switch) and returned, in the mode it was in.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  if not isinstance(model, nnx.Module):
    return calibrate(model, variables, images, collections=("batch_stats",), train=True)
  stats, evaluating = model.site_values("stats"), model.use_running_average
  model.train()
  for batch in images:
    model(batch)
  model.set_site_values(stats, "stats")
  if evaluating:
    model.eval()
  return model
