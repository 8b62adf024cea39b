"""Match module paths against regex rules: first match wins, unused rules are reported.

Used by everything that selects layers (quantization rules, pruning, reports), so that a pattern
means the same thing everywhere. A path is the '/'-joined module path of a site, e.g.
``"stage1/block0/conv1"``; patterns are Python regexes applied with ``re.search``, so ``"conv"``
matches any path containing ``conv`` and ``"^head$"`` pins one exactly.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar


class HasPattern(Protocol):
  pattern: str


R = TypeVar("R", bound=HasPattern)


class UnusedRuleWarning(UserWarning):
  """A rule's pattern matched no site of the model (usually a typo in the regex)."""


def path_str(path: Iterable[str]) -> str:
  """Joins a module or parameter path (tuple of names) with '/'."""
  return "/".join(str(p) for p in path)


def compile_pattern(pattern: str) -> re.Pattern[str]:
  """Compiles a rule pattern, naming the pattern when it is not a valid regex."""
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f"rule pattern {pattern!r} is not a valid regular expression: {e}") from e


def first_match(rules: Sequence[R], path: str) -> tuple[int, R] | None:
  """Returns (index, rule) of the first rule whose pattern is found in ``path``, else None."""
  for i, rule in enumerate(rules):
    if compile_pattern(rule.pattern).search(path):
      return i, rule
  return None


def assign(rules: Sequence[R], paths: Iterable[str]) -> dict[str, R]:
  """Maps every path matched by some rule to its first matching rule."""
  out = {}
  for path in paths:
    match = first_match(rules, path)
    if match is not None:
      out[path] = match[1]
  return out


def unused_rules(rules: Sequence[R], paths: Iterable[str]) -> list[R]:
  """Rules that are the first match of no path (shadowed or matching nothing)."""
  used = set()
  for path in paths:
    match = first_match(rules, path)
    if match is not None:
      used.add(match[0])
  return [r for i, r in enumerate(rules) if i not in used]


def warn_unused(rules: Sequence[R], paths: Iterable[str], what: str = "rule") -> list[R]:
  """Warns (UnusedRuleWarning) about every rule that selected nothing; returns them."""
  paths = list(paths)
  unused = unused_rules(rules, paths)
  for r in unused:
    warnings.warn(
        f"{what} with pattern {r.pattern!r} matched no site; sites are: "
        f"{', '.join(paths) if paths else '(none)'}",
        UnusedRuleWarning,
        stacklevel=3,
    )
  return unused
