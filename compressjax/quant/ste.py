"""Straight-through estimators: rounding with identity gradients, masked clipping, grad scaling.

Every STE here is written as ``stop_gradient(f(x)) + (x - stop_gradient(x))``: the forward value
is exactly ``f(x)`` (the correction term is exactly 0, so fake-quantized values sit on the grid
bit for bit) and the gradient is the identity. No ``custom_vjp`` is needed, so everything
composes with ``jit``, ``grad``, ``vmap`` and higher-order autodiff.
"""

import jax
import jax.numpy as jnp

Array = jax.Array


def straight_through(x: Array, y: Array) -> Array:
  """``y`` forward, identity gradient w.r.t. ``x`` backward (``y`` is a function of ``x``)."""
  return jax.lax.stop_gradient(y) + (x - jax.lax.stop_gradient(x))


def round_ste(x: Array) -> Array:
  """``round(x)`` (half to even) forward, identity backward."""
  return straight_through(x, jnp.round(x))


def floor_ste(x: Array) -> Array:
  """``floor(x)`` forward, identity backward."""
  return straight_through(x, jnp.floor(x))


def sign_ste(x: Array) -> Array:
  """``+1`` for ``x >= 0`` else ``-1`` forward, identity backward.

  Never 0 (unlike ``jnp.sign``), so 1-bit codes have exactly two levels.
  """
  return straight_through(x, jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype))


def clip(x: Array, lo: Array | float, hi: Array | float) -> Array:
  """``clip(x, lo, hi)`` whose gradient is masked outside the range.

  The gradient w.r.t. ``x`` is 1 strictly inside ``(lo, hi)`` and 0 elsewhere; a bound receives
  the gradient of the elements clamped to it (``x <= lo``, ``x >= hi``). Unlike ``jnp.clip``
  (which splits the gradient 1/2-1/2 at ties) this is one-sided at the bounds, as in the closed
  forms of LSQ (``-Q_N`` for ``v/s <= -Q_N``, ``Q_P`` for ``v/s >= Q_P``) and PACT
  (``d/d alpha = 1`` for ``x >= alpha``).
  """
  return jnp.where(x <= lo, lo, jnp.where(x >= hi, hi, x))


def grad_scale(s: Array, g: Array | float) -> Array:
  """``s`` forward, gradient multiplied by ``g`` backward (LSQ's step-size gradient scale).

  The same as ``stop_gradient(s - s*g) + s*g`` but with a forward value of exactly ``s``.
  """
  return jax.lax.stop_gradient(s) + (s * g - jax.lax.stop_gradient(s * g))
