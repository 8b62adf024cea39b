"""Match names against regex rules: first match wins, unused rules are reported.

Everything that selects sites or parameters (quantization rules, pruning, distillation, reports)
uses this module, so a pattern means the same thing everywhere: it is searched (``re.search``)
in a name such as ``"stage1/block0/conv1/kernel"`` *and* in its module path
``"stage1/block0/conv1"``, and matches if either contains it. So ``"conv"`` matches every site
of a module whose path contains ``conv``, ``"^head$"`` pins the module ``head``, and
``"kernel$"`` selects parameters by name.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar

from compressjax.core.tree_paths import path_str

__all__ = ["UnusedRuleWarning", "compile_pattern", "first_match", "matches", "path_str",
           "unused_rules", "warn_unused"]


class HasPattern(Protocol):
  pattern: str


R = TypeVar("R", bound=HasPattern)


class UnusedRuleWarning(UserWarning):
  """A rule's pattern matched no site of the model (usually a typo in the regex)."""


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> re.Pattern[str]:
  """Compiles a rule pattern, naming the pattern when it is not a valid regex."""
  if not isinstance(pattern, str):
    raise TypeError(f"rule pattern {pattern!r} must be a string (a regular expression)")
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f"rule pattern {pattern!r} is not a valid regular expression: {e}") from e


def _name(target: Any) -> str:
  return target if isinstance(target, str) else target.name


def matches(pattern: str, name: str) -> bool:
  """Whether ``pattern`` is found in ``name`` or in its module path (``name`` minus its last part)."""
  p = compile_pattern(pattern)
  return bool(p.search(name) or p.search(name.rpartition("/")[0]))


def first_match(rules: Sequence[R], target: Any) -> tuple[int, R] | None:
  """(index, rule) of the first rule matching ``target`` (a name, or a site), else None.

  For a site, a rule must also apply to its kind (``rule.applies_to(site)``).
  """
  name = _name(target)
  for i, rule in enumerate(rules):
    if not isinstance(target, str) and hasattr(rule, "applies_to") and not rule.applies_to(target):
      continue
    if matches(rule.pattern, name):
      return i, rule
  return None


def unused_rules(rules: Sequence[R], targets: Iterable[Any]) -> list[R]:
  """Rules that are the first match of no target (shadowed or matching nothing)."""
  used = set()
  for target in targets:
    match = first_match(rules, target)
    if match is not None:
      used.add(match[0])
  return [r for i, r in enumerate(rules) if i not in used]


def warn_unused(rules: Sequence[R], targets: Iterable[Any], what: str = "rule") -> list[R]:
  """Warns (UnusedRuleWarning) about every rule that selected nothing; returns them."""
  targets = list(targets)
  unused = unused_rules(rules, targets)
  names = ", ".join(_name(t) for t in targets) if targets else "(none)"
  for r in unused:
    warnings.warn(f"{what} with pattern {r.pattern!r} matched no site; sites are: {names}",
                  UnusedRuleWarning, stacklevel=3)
  return unused
