"""Rules: which transform runs on which site, selected by a regex on the module path."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from compressjax.core.matching import compile_pattern


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rule:
  """What happens at every site whose '/'-joined module path matches ``pattern``.

  The first matching rule wins. ``weight`` transforms the site's kernel, ``act`` its input;
  ``Rule(pattern="^head$")`` with neither keeps that layer in float, ahead of later rules.

  Attributes:
    pattern: regular expression searched in the module path (``re.search``).
    weight: a Quantizer or other Transform for the kernel, or None (float kernel).
    act: a Quantizer or other Transform for the layer's input, or None (float input).
  """

  pattern: str
  weight: Any = None
  act: Any = None

  def __post_init__(self):
    compile_pattern(self.pattern)

  @property
  def is_float(self) -> bool:
    return self.weight is None and self.act is None


def with_edges(
    rules: Sequence[Rule],
    sites: Sequence[Any],
    *,
    first: Rule | None = None,
    last: Rule | None = None,
) -> list[Rule]:
  """Prepends rules pinning the first and last site (e.g. 8-bit or float) before ``rules``.

  ``sites`` is :func:`compressjax.core.discover`'s list (call order); ``first``/``last`` are
  rules whose pattern is replaced by the exact path of that site; None keeps the layer float.
  Most methods keep the first and last layer at higher precision: they hold few weights and
  are the most sensitive.
  """
  if not sites:
    raise ValueError("with_edges: the model has no sites (Dense/Conv/Einsum layers)")
  edges = []
  for site, rule in ((sites[0], first), (sites[-1], last)):
    pattern = f"^{re.escape(site.path)}$"
    edges.append(Rule(pattern=pattern) if rule is None else dataclasses.replace(rule, pattern=pattern))
  return [*edges, *rules]
