"""Unsigned integer codes -> exact floats by bit tricks, with no int->float convert per element.

OR-ing a code ``u < 2**p`` into the mantissa of the float ``2**p`` (``p`` explicit mantissa bits)
gives the float ``2**p + u`` exactly; subtracting ``2**p + offset`` leaves ``u - offset``, also
exact. One integer OR, one bitcast and one float subtract per element (the "magic number"
dequantization of FasterTransformer and Marlin); GPU int->float converts run at a fraction of
the ALU rate, so this keeps dequantization off the critical path of a memory-bound matmul.

The magic float is ``dtype`` itself when the codes fit its mantissa (bf16: 7 bits, so 2/4-bit
codes; f16: 10 bits; f32: 23 bits), otherwise f32 followed by one float->float cast (bf16 with
8-bit codes, as Marlin does). ``wide=True`` always goes through f32 (TPU: 32-bit VPU lanes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# dtype -> (integer type of the same width, bit pattern of 2**p, explicit mantissa bits p)
_MAGIC = {
    jnp.dtype(jnp.bfloat16): (jnp.uint16, 0x4300, 7),
    jnp.dtype(jnp.float16): (jnp.uint16, 0x6400, 10),
    jnp.dtype(jnp.float32): (jnp.int32, 0x4B000000, 23),
}


def magic_dtype(bits: int, dtype, *, wide: bool = False) -> jnp.dtype:
  """The float type whose mantissa receives ``bits``-bit codes for a result of ``dtype``."""
  dtype = jnp.dtype(dtype)
  if dtype not in _MAGIC:
    raise TypeError(f"codes convert to bfloat16, float16 or float32, not {dtype}")
  if wide or bits > _MAGIC[dtype][2]:
    return jnp.dtype(jnp.float32)
  return dtype


def codes_to_float(u: Array, bits: int, offset: int, dtype, *, wide: bool = False) -> Array:
  """``(u - offset).astype(dtype)`` for int32 ``u`` in ``[0, 2**bits)``, computed exactly.

  ``offset`` is the storage offset of signed codes (``2**(bits-1)``) or 0; it is folded into
  the subtracted constant for free.
  """
  work = magic_dtype(bits, dtype, wide=wide)
  int_type, pattern, mantissa = _MAGIC[work]
  f = lax.bitcast_convert_type((u | pattern).astype(int_type), work)
  value = f - jnp.asarray(2.0**mantissa + offset, work)
  return value.astype(dtype)
