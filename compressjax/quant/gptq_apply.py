"""GPTQ at a model's sites: Hessians from calibration batches, codes per site, a quantizer that
serves them.

:func:`gptq.gptq_quantize` works on one ``(K, N)`` matrix. This module wires it to a Linen model
through the op-level core, as pure functions over ``(model, variables, calibration batches)``:

* :func:`site_hessians`: ``H = 2 X^T X`` of the activation operand of every selected weight site,
  summed over the calibration batches. ``X`` is the activation as the op contracts it: its
  contracting axes (in the op's pairing order, the same order as the weight view's) flattened
  to ``K`` and every other axis to rows, so ``out`` of attention (``(B, T, H, D)`` x
  ``(H, D, W)``) gets a ``(H*D, H*D)`` Hessian.
* :func:`gptq_codes`: ``{site name: (codes, scale, zero_point)}`` of GPTQ on every selected
  site's weight view ``(*contracting, N)`` reshaped to ``(K, N)``.
* :class:`GivenCodes`: a weight quantizer whose state (``quant_stats``) holds such codes;
  ``fake`` dequantizes them and ``export`` writes them as a :class:`QArray`, so
  ``cj.export`` serves exactly the given codes. :func:`set_given_codes` writes codes into the
  variables of a model compressed with ``GivenCodes`` rules (after ``init_from``).

GPTQ is sequential only within a layer here: every site's Hessian comes from the float model's
inputs (not from the inputs of the already-quantized earlier layers).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from compressjax.core.record import RecordInput
from compressjax.core.compress import SITE_PARAMS, STATS, compress, init_from, uncompressed
from compressjax.core.matching import UnusedRuleWarning
from compressjax.core.rule import Rule
from compressjax.core.sites import discover
from compressjax.core.tree_paths import get_path, set_path
from compressjax.qarray import QArray
from compressjax.quant import gptq
from compressjax.quant.base import Codes, Quantizer, State

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class GivenCodes(Quantizer):
  """A weight quantizer that serves given integer codes (GPTQ's, or any other).

  State: ``stats = {"codes": int8 (K, N), "scale": (G, N), "zero": (G, N)}`` (``G = K //
  group_size``, 1 without groups); initialised to zero codes, to be replaced by
  :func:`set_given_codes`. ``fake`` is ``(codes - zero) * scale`` in the weight's view shape
  (no gradient to the float weight: it is for post-training quantization).

  Attributes:
    bits: 2..8.
    group_size: rows sharing a scale, or None (one per output column).
    symmetric: signed codes without zero point (True) or unsigned codes with one.
  """

  bits: int = 4
  group_size: int | None = None
  symmetric: bool = True

  def bit_range(self) -> tuple[int, int]:
    return 2, 8

  def _groups(self, shape) -> tuple[int, int, int]:
    k, n = math.prod(shape[:-1]), shape[-1]
    if self.group_size is not None and k % self.group_size:
      raise ValueError(f"GivenCodes: group_size={self.group_size} does not divide K={k}")
    return k, n, k // self.group_size if self.group_size else 1

  def init(self, x: Array) -> tuple[State, State]:
    k, n, g = self._groups(x.shape)
    return {}, {"codes": jnp.zeros((k, n), jnp.int8), "scale": jnp.ones((g, n), jnp.float32),
                "zero": jnp.zeros((g, n), jnp.float32)}

  def _dequant(self, stats: State) -> Array:
    codes = stats["codes"].astype(jnp.float32)
    g, n = stats["scale"].shape
    codes = codes.reshape(g, -1, n) - stats["zero"][:, None, :]
    return (codes * stats["scale"][:, None, :]).reshape(-1, n)

  def fake(self, x: Array, params: State, stats: State) -> Array:
    del params
    return self._dequant(stats).reshape(x.shape).astype(x.dtype)

  def quantize(self, x: Array, params: State, stats: State) -> Codes:
    del params
    _, n, g = self._groups(x.shape)
    if g != 1:
      raise NotImplementedError("GivenCodes: the integer form is per channel only (no groups)")
    lo, hi = self._code_bounds()
    codes = stats["codes"].astype(jnp.float32).reshape(x.shape)
    shape = (1,) * (x.ndim - 1) + (n,)
    return Codes(codes, stats["scale"].reshape(shape), stats["zero"].reshape(shape), lo, hi)

  def _code_bounds(self) -> tuple[int, int]:
    if self.symmetric:
      return -(2 ** (self.bits - 1) - 1), 2 ** (self.bits - 1) - 1
    return 0, 2**self.bits - 1

  def export(self, x: Array, params: State, stats: State) -> QArray:
    del params
    return QArray.from_codes(
        stats["codes"].astype(jnp.int32).reshape(x.shape), stats["scale"],
        None if self.symmetric else stats["zero"], bits=self.bits, signed=self.symmetric,
        group_size=self.group_size)


def _activation_matrix(site, x: Array) -> Array:
  """The activation operand of ``site`` as ``(rows, K)``, K in the weight view's order."""
  index = 1 - site.weight_index
  contract = site.contracting(index)
  rest = tuple(a for a in range(x.ndim) if a not in contract)
  k = math.prod(x.shape[a] for a in contract)
  return jnp.transpose(x, (*rest, *contract)).reshape(-1, k)


def site_hessians(model: Any, variables: dict, batches: Iterable[Array],
                  select: Callable[[Any], bool] = lambda site: True,
                  **kwargs: Any) -> dict[str, Array]:
  """``{site name: sum over batches of 2 X^T X}`` for the weight sites of a float Linen
  ``model`` that ``select`` keeps (sites in ``nn.scan`` stacks are not supported)."""
  plain = uncompressed(model)
  batches = iter(batches)
  first = next(batches)
  sites = [s for s in discover(plain, first, **kwargs) if s.has_weight and select(s)]
  for s in sites:
    if s.stack:
      raise ValueError(f"site_hessians: site {s.name!r} is inside an nn.scan stack (unsupported)")
  recorder = compress(plain, [Rule(pattern=".", act=RecordInput())])
  user = {k: v for k, v in variables.items() if k != STATS}
  user["params"] = {k: v for k, v in variables["params"].items() if k != SITE_PARAMS}

  @jax.jit
  def one(user, x, hessians):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UnusedRuleWarning)
      stats = init_from(recorder, user, x, **kwargs).get(STATS, {})
    out = {}
    for s in sites:
      xs = get_path(stats, s.name)["input"]["x"]
      out[s.name] = gptq.hessian_from_inputs(_activation_matrix(s, xs), hessians.get(s.name))
    return out

  hessians: dict[str, Array] = {}
  for x in (first, *batches):
    hessians = one(user, x, hessians) if hessians else one(user, x, {})
  return hessians


def gptq_codes(model: Any, variables: dict, hessians: dict[str, Array], example: Array, *,
               bits: int, group_size: int | None = None, act_order: bool = False,
               damp: float = 0.01, block_size: int = 128, symmetric: bool = True,
               **kwargs: Any) -> dict[str, tuple[Array, Array, Array]]:
  """GPTQ codes ``{site name: (codes int8 (K, N), scale (G, N), zero (G, N))}`` of every site
  in ``hessians`` (from :func:`site_hessians`), from the float weights in ``variables``."""
  plain = uncompressed(model)
  sites = {s.name: s for s in discover(plain, example, **kwargs) if s.name in hessians}
  missing = set(hessians) - set(sites)
  if missing:
    raise ValueError(f"gptq_codes: no weight site named {sorted(missing)} in the model")
  params = {k: v for k, v in variables["params"].items() if k != SITE_PARAMS}
  out = {}
  for name, site in sites.items():
    perm, view_shape = site.weight_layout()
    w = jnp.transpose(get_path(params, site.param), perm).reshape(view_shape)
    w = w.reshape(-1, view_shape[-1])
    codes, scale, zero = gptq.gptq_quantize(
        w, hessians[name], bits=bits, group_size=group_size, act_order=act_order, damp=damp,
        block_size=block_size, symmetric=symmetric)
    out[name] = (codes.astype(jnp.int8), scale,
                 jnp.zeros_like(scale) if zero is None else zero)
  return out


def rtn_codes(model: Any, variables: dict, names: Iterable[str], example: Array, *, bits: int,
              group_size: int | None = None, symmetric: bool = True,
              **kwargs: Any) -> dict[str, tuple[Array, Array, Array]]:
  """Round-to-nearest codes on GPTQ's grid, in :func:`gptq_codes`' form (a baseline)."""
  plain = uncompressed(model)
  names = set(names)
  out = {}
  params = {k: v for k, v in variables["params"].items() if k != SITE_PARAMS}
  for site in discover(plain, example, **kwargs):
    if site.name in names:
      perm, view_shape = site.weight_layout()
      w = jnp.transpose(get_path(params, site.param), perm).reshape(-1, view_shape[-1])
      codes, scale, zero = gptq.rtn_quantize(w, bits=bits, group_size=group_size,
                                             symmetric=symmetric)
      out[site.name] = (codes.astype(jnp.int8), scale,
                        jnp.zeros_like(scale) if zero is None else zero)
  return out


def set_given_codes(variables: dict, codes: dict[str, tuple[Array, Array, Array]]) -> dict:
  """``variables`` (of a model compressed with :class:`GivenCodes` weight rules, after
  ``init_from``) with each named site's weight state replaced by the given codes."""
  stats = jax.tree.map(lambda a: a, dict(variables.get(STATS, {})))
  for name, (c, s, z) in codes.items():
    try:
      old = get_path(stats, name)["weight"]
    except (KeyError, TypeError) as e:
      raise ValueError(f"set_given_codes: site {name!r} has no GivenCodes weight state") from e
    new = {"codes": jnp.asarray(c, jnp.int8), "scale": jnp.asarray(s, jnp.float32),
           "zero": jnp.asarray(z, jnp.float32)}
    for key in ("codes", "scale", "zero"):
      if np.shape(old[key]) != np.shape(new[key]):
        raise ValueError(f"set_given_codes: site {name!r} {key} has shape {np.shape(new[key])}; "
                         f"the model's state has {np.shape(old[key])}")
    set_path(stats, f"{name}/weight", new)
  return {**variables, STATS: stats}
