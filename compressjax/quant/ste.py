"""Straight-through estimators: rounding with identity gradients, masked clipping, grad scaling.

Rounding STEs are ``custom_jvp`` rules: the forward value is exactly ``f(x)`` (fake-quantized values
sit on the grid bit for bit, with no ``x - x`` correction term left in the graph) and the tangent
is the identity. A JVP rule (not a VJP) keeps forward mode, so everything composes with ``jit``,
``grad``, ``vmap`` and higher-order autodiff (HAWQ's Hessian-vector products).
"""

import jax
import jax.numpy as jnp

Array = jax.Array


def _identity_tangent(f):
  """``f`` forward with the identity as its derivative."""
  g = jax.custom_jvp(f)
  g.defjvp(lambda primals, tangents: (f(*primals), tangents[0]))
  return g


def rint(x: Array) -> Array:
  """``round(x)``, half to even: ``jnp.round`` without its jit wrapper (one op per call in the
  training graph instead of a nested call to trace, lower and inline)."""
  return jax.lax.round(x, jax.lax.RoundingMethod.TO_NEAREST_EVEN)


def select(pred: Array, on_true: Array | float, on_false: Array | float) -> Array:
  """``jnp.where(pred, on_true, on_false)`` (same broadcasting and dtype promotion) as one
  ``lax.select``, without ``jnp.where``'s jit wrapper."""
  dtype = jnp.result_type(on_true, on_false)
  shape = jnp.broadcast_shapes(jnp.shape(pred), jnp.shape(on_true), jnp.shape(on_false))
  full = lambda a, t: jnp.broadcast_to(jnp.asarray(a, t), shape)
  return jax.lax.select(full(pred, bool), full(on_true, dtype), full(on_false, dtype))


round_ste = _identity_tangent(rint)
round_ste.__doc__ = "``round(x)`` (half to even) forward, identity backward."
floor_ste = _identity_tangent(lambda x: jnp.floor(x))
floor_ste.__doc__ = "``floor(x)`` forward, identity backward."


@jax.custom_jvp
def fake_quant(v: Array, step: Array, lo: Array | int, hi: Array | int) -> Array:
  """``clip(round(v / step), lo, hi) * step`` with LSQ's straight-through derivatives.

  One rule instead of autodiff through ``round_ste(clip(v / step)) * step``, which leaves about
  twice the elementwise ops in the graph (forward and backward) for the same values: ``d/dv`` is 1
  strictly inside ``(lo, hi)`` and 0 outside; ``d/dstep`` is ``round(v/s) - v/s`` inside and the
  clamped bound outside. ``lo``/``hi`` are integer-valued (constants or calibrated arrays) and get
  no derivative.
  """
  return clip(rint(v / step), lo, hi) * step


@fake_quant.defjvp
def _fake_quant_jvp(primals, tangents):
  v, step, lo, hi = primals
  dv, dstep = tangents[:2]
  u = v / step
  codes = clip(rint(u), lo, hi)
  inside = (u > lo) & (u < hi)
  zero = jnp.zeros((), u.dtype)
  return codes * step, select(inside, dv, zero) + dstep * (codes - select(inside, u, zero))


sign_ste = _identity_tangent(lambda x: jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype))
sign_ste.__doc__ = """``+1`` for ``x >= 0`` else ``-1`` forward, identity backward.

Never 0 (unlike ``jnp.sign``), so 1-bit codes have exactly two levels.
"""


def clip(x: Array, lo: Array | float, hi: Array | float) -> Array:
  """``clip(x, lo, hi)`` whose gradient is masked outside the range.

  The gradient w.r.t. ``x`` is 1 strictly inside ``(lo, hi)`` and 0 elsewhere; a bound receives
  the gradient of the elements clamped to it (``x <= lo``, ``x >= hi``). Unlike ``jnp.clip``
  (which splits the gradient 1/2-1/2 at ties) this is one-sided at the bounds, as in the closed
  forms of LSQ (``-Q_N`` for ``v/s <= -Q_N``, ``Q_P`` for ``v/s >= Q_P``) and PACT
  (``d/d alpha = 1`` for ``x >= alpha``).
  """
  return select(x <= lo, lo, select(x >= hi, hi, x))


@jax.custom_jvp
def grad_scale(s: Array, g: Array | float) -> Array:
  """``s`` forward, gradient multiplied by ``g`` backward (LSQ's step-size gradient scale).

  A JVP rule rather than ``stop_gradient(s) + (s*g - stop_gradient(s*g))``: the forward value
  is ``s`` itself with no ops in the graph, and ``g`` (a constant scale) gets no derivative.
  """
  del g
  return s


@grad_scale.defjvp
def _grad_scale_jvp(primals, tangents):
  s, g = primals
  return s, tangents[0] * g
