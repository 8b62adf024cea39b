"""Several reductions over the same axes as one variadic ``lax.reduce``.

XLA:CPU emits a variadic reduction as one loop with the operands' elementwise producers fused in.
Single reductions each materialize their (masked) input, or become a library reduction that
takes no ``round``/``select`` producers; both leave extra kernels and temporaries.
"""

import functools
from collections.abc import Callable, Sequence

import jax
from jax import lax

Array = jax.Array


def fused_reduce(operands: Sequence[Array], inits: Sequence[Array],
                 combines: Sequence[Callable[[Array, Array], Array]],
                 axes: tuple[int, ...]) -> tuple[Array, ...]:
  """``tuple(lax.reduce(o, i, c, axes) for o, i, c in zip(operands, inits, combines))`` in one
  reduction; ``combines`` are lax binary ops (``lax.add``, ``lax.max``, ...)."""
  return tuple(lax.reduce(tuple(operands), tuple(inits), _computation(tuple(combines)), axes))


@functools.lru_cache(maxsize=None)
def _computation(combines: tuple) -> Callable:
  """One function object per ``combines``: ``lax.reduce`` traces it once per signature instead
  of once per call."""
  return lambda a, b: tuple(c(x, y) for c, x, y in zip(combines, a, b))
