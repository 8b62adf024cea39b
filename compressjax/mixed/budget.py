"""The budget of a mixed-precision search: BitOPs or model size, from ``compressjax.cost``.

Shared by FracBits (a differentiable penalty over fractional bits) and the HAWQ baseline
(greedy integer allocation). Bits are dicts ``site path -> bits`` as in
:meth:`compressjax.cost.Profile.bitops`; ``None`` is a float operand (32 bits), except the first
site's float input (the image), which counts as ``input_bits`` (images are natively 8-bit), so
that one float input does not dwarf the whole budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from compressjax.cost import Profile

KINDS = ("bitops", "size")


@dataclasses.dataclass(frozen=True)
class Budget:
  """A cost target and the penalty that pulls a search towards it.

  Attributes:
    target: BitOPs per example (``kind="bitops"``) or bytes (``kind="size"``).
    kind: ``"bitops"``: ``sum_l MACs_l * b_w_l * b_a_l``; ``"size"``: kernels at their bits
      plus biases and other parameters at 32 bits (``Profile.size_bytes``).
    kappa: penalty weight (FracBits: 1).
    unit: the penalty is ``kappa * |cost - target| / unit``; FracBits uses GBitOPs (1e9) on
      ImageNet models; None means ``unit = target`` (relative), which suits any model size.
    input_bits: bits counted for the first site's float input.
  """

  target: float
  kind: str = "bitops"
  kappa: float = 1.0
  unit: float | None = None
  input_bits: int = 8

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Budget: kind={self.kind!r} is not allowed; use one of {KINDS}")
    if not float(self.target) > 0:
      raise ValueError(f"Budget: target={self.target!r} is not allowed; use a positive number")
    if not self.kappa >= 0:
      raise ValueError(f"Budget: kappa={self.kappa!r} is not allowed; use kappa >= 0")
    if self.unit is not None and not self.unit > 0:
      raise ValueError(f"Budget: unit={self.unit!r} is not allowed; use a positive number or None")

  def cost(self, profile: Profile, w_bits: Mapping[str, Any], a_bits: Mapping[str, Any]) -> Any:
    """The cost of per-site bits (differentiable when the bits are jnp arrays)."""
    check_profile(profile, [*w_bits, *a_bits])
    if self.kind == "size":
      return profile.size_bytes(dict(w_bits))
    first = profile.sites[0].path
    a_bits = dict(a_bits)
    if a_bits.get(first) is None:
      a_bits[first] = self.input_bits
    return profile.bitops(dict(w_bits), a_bits)

  def penalty(self, cost: Any) -> Any:
    return self.kappa * abs(cost - self.target) / (self.unit or self.target)

  def check_reachable(self, min_cost: float, what: str) -> None:
    """ValueError if the cheapest allowed assignment (``what``) already exceeds the target."""
    if float(min_cost) > self.target:
      raise ValueError(
          f"budget {self.kind} target {self.target:,.0f} is below {float(min_cost):,.0f}, the "
          f"smallest cost the allowed bits reach ({what}); raise the target or lower min_bits"
      )

  def relative_error(self, cost: float) -> float:
    return float(cost) / self.target - 1.0


def check_profile(profile: Profile, paths: Iterable[str]) -> None:
  """ValueError naming every layer in ``paths`` that has no entry in ``profile``."""
  missing = sorted(set(paths) - set(profile.paths))
  if missing:
    raise ValueError(
        f"layers {missing} have no entry in the cost profile (profiled sites: "
        f"{', '.join(profile.paths) or '(none)'}); profile the model being compressed with "
        "compressjax.cost.profile(model, x)"
    )
