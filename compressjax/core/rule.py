"""Rules: which transforms run at which sites, selected by a pattern (see ``matching``)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from compressjax.core.matching import compile_pattern


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rule:
  """What happens at every site whose name (or module path) matches ``pattern``.

  The first matching rule wins. At a site that reads a parameter, ``weight`` transforms the
  parameter operand and ``act`` the activation operand. At an activation x activation site
  (attention's q.k and p.v), ``act`` transforms the left operand and ``rhs`` the right one; such
  sites are selected only by rules that set ``rhs`` (or keep them float), so a catch-all weight
  rule never quantizes attention products by surprise. A rule with no transform keeps the
  sites it matches float, ahead of later rules.

  Attributes:
    pattern: regular expression searched in the site name and its module path.
    weight: a transform for the parameter operand, or None (float).
    act: a transform for the activation (left) operand, or None (float).
    rhs: a transform for the right operand of an activation x activation op, or None.
  """

  pattern: str
  weight: Any = None
  act: Any = None
  rhs: Any = None

  def __post_init__(self):
    compile_pattern(self.pattern)
    if self.weight is not None and self.rhs is not None:
      raise ValueError(
          f"Rule {self.pattern!r}: weight= is for sites that read a parameter and rhs= for "
          "activation x activation sites; give one rule for each")

  @property
  def is_float(self) -> bool:
    return self.weight is None and self.act is None and self.rhs is None

  def applies_to(self, site: Any) -> bool:
    """Weight rules select parameter sites; rules with ``rhs`` select activation sites."""
    if self.is_float:
      return True
    return self.rhs is None if site.has_weight else self.rhs is not None

  def transforms_for(self, site: Any) -> tuple[Any, Any]:
    """The transforms of the (lhs, rhs) operands of ``site``."""
    if not site.has_weight:
      return self.act, self.rhs
    return (self.weight, self.act) if site.weight_index == 0 else (self.act, self.weight)


def with_edges(
    rules: Sequence[Rule],
    sites: Sequence[Any],
    *,
    first: Rule | None = None,
    last: Rule | None = None,
) -> list[Rule]:
  """Prepends rules pinning the first and last weight site (e.g. 8-bit or float) to ``rules``.

  ``sites`` is :func:`compressjax.core.discover`'s list (call order); ``first``/``last`` are rules
  whose pattern is replaced by the exact name of that site; None keeps the layer float. Most
  methods keep the first and last layer at higher precision: they hold few weights and are the
  most sensitive.
  """
  sites = [s for s in sites if getattr(s, "has_weight", True)]
  if not sites:
    raise ValueError("with_edges: the model has no sites that read a parameter")
  edges = []
  for site, rule in ((sites[0], first), (sites[-1], last)):
    name = getattr(site, "name", site)
    pattern = f"^{re.escape(name)}$"
    edges.append(Rule(pattern=pattern) if rule is None else dataclasses.replace(rule, pattern=pattern))
  return [*edges, *rules]
