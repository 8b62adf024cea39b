"""Sparsity schedules: when masks are recomputed and how sparse they are at each step.

A schedule is evaluated inside jit on the pruner's step counter (a traced int), so every method
returns jnp values; nothing here branches in Python on the step.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp


class Schedule(Protocol):
  """Maps a step to a target sparsity and says on which steps masks are recomputed."""

  begin_step: int

  def sparsity(self, step: jax.Array, final: float | jax.Array) -> jax.Array:
    ...

  def is_update(self, step: jax.Array) -> jax.Array:
    ...


def _check_fraction(name: str, value: float) -> None:
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {value!r}")


@dataclasses.dataclass(frozen=True)
class OneShot:
  """Prune to the final sparsity once, at ``step`` (0: on the first optimizer update)."""

  step: int = 0

  def __post_init__(self):
    if self.step < 0:
      raise ValueError(f"one_shot step must be >= 0, got {self.step}")

  @property
  def begin_step(self) -> int:
    return self.step

  def sparsity(self, step, final):
    return jnp.where(step >= self.step, final, 0.0)

  def is_update(self, step):
    return step == self.step


@dataclasses.dataclass(frozen=True)
class Polynomial:
  """Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f) (1 - p)^power``, ``p = (t - t0) / (t_end - t0)``.

  Masks are recomputed every ``frequency`` steps from ``begin_step`` to ``end_step`` and at
  ``end_step`` itself, so the final sparsity is always reached.
  """

  begin_step: int
  end_step: int
  frequency: int = 100
  initial_sparsity: float = 0.0
  power: int = 3

  def __post_init__(self):
    if self.begin_step < 0 or self.end_step <= self.begin_step:
      raise ValueError(f"polynomial schedule needs 0 <= begin_step < end_step, got "
                       f"begin_step={self.begin_step}, end_step={self.end_step}")
    if self.frequency < 1:
      raise ValueError(f"polynomial schedule frequency must be >= 1, got {self.frequency}")
    _check_fraction("polynomial schedule initial_sparsity", self.initial_sparsity)

  def sparsity(self, step, final):
    p = jnp.clip((step - self.begin_step) / (self.end_step - self.begin_step), 0.0, 1.0)
    return final + (self.initial_sparsity - final) * (1.0 - p) ** self.power

  def is_update(self, step):
    in_range = (step >= self.begin_step) & (step <= self.end_step)
    on_beat = ((step - self.begin_step) % self.frequency == 0) | (step == self.end_step)
    return in_range & on_beat


def one_shot(step: int = 0) -> OneShot:
  """Prune once at ``step``."""
  return OneShot(step)


def polynomial(begin_step: int, end_step: int, frequency: int = 100,
               initial_sparsity: float = 0.0, power: int = 3) -> Polynomial:
  """Gradual pruning (Zhu & Gupta); see ``Polynomial``."""
  return Polynomial(begin_step, end_step, frequency, initial_sparsity, power)
