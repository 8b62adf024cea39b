"""``discover``: the sites of a model, in call order, without running it (abstract tracing).

What is a site: every ``dot_general`` or ``conv_general_dilated`` (``jnp.dot`` / ``matmul`` /
``einsum``, ``lax.conv*``, and every Flax layer built on them) one of whose operands is a
parameter, or a reshape / transpose / cast / slice of one, in any module and method, inside
``jit`` / ``scan`` / ``remat`` / ``vmap`` (a vmapped parameter becomes a batch axis of the op).
Ops between two activations are sites too (``module/dot_general#i``). Not sites: a parameter
that reaches an op through arithmetic (``w * mask``, ``w + a @ b``), gathers (``Embed`` lookup),
ops between two parameters, and ops inside ``while_loop`` / ``cond``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from compressjax.core.trace import Site

__all__ = ["Site", "discover"]


def discover(model: Any, *args: Any, method: str | None = None, **kwargs: Any) -> list[Site]:
  """Sites of a Linen or NNX ``model`` called on ``args`` (arrays or ShapeDtypeStructs).

  Keyword arguments that are not arrays (``train=False``) stay static Python values.
  """
  from compressjax.core.compress import trace_linen, uncompressed  # pylint: disable=g-import-not-at-top

  if isinstance(model, nn.Module):
    plain = uncompressed(model)
    variables = jax.eval_shape(
        lambda *a: plain.init(jax.random.key(0), *a, method=method, **kwargs), *args)
    return trace_linen(plain, variables, *args, method=method, **kwargs).site_list
  from compressjax.core.nnx_compress import trace_nnx  # pylint: disable=g-import-not-at-top

  return trace_nnx(model, args, kwargs, method=method or "__call__").site_list
