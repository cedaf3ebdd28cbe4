"""A rule's alert condition in PromQL, one comparison per severity level.

A rule kind says how its value is computed from the signal (`value_of`), what it is compared with at each
severity, and what only the engine's own evaluation checks. The compiler writes each level as an alerting rule
reading recorded series; the PromQL engine range-queries the same level with the recorded series expanded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from rules_engine.spec.models import SeverityLadder

# How a rule's direction compares: strictly at its threshold (as the engine's condition) ...
DIRECTION_OPERATORS = {"above": ">", "below": "<"}
# ... and inclusively at the higher levels of a ladder (the engine grades a peak by peak/threshold >= level).
LEVEL_OPERATORS = {"above": ">=", "below": "<="}


def number(value: float) -> str:
    """A threshold as PromQL and YAML show it: shortest round-trip form, no float noise (1.2 × 0.7 → 0.84)."""
    return f"{value:.12g}"


@dataclass(frozen=True)
class Level:
    """One alert of a rule: its severity, and the comparison `value_of(signal) <comparison> bound`."""

    severity: str
    bound: float
    comparison: str
    value_of: Callable[[str], str]  # signal reference (recorded selector or parenthesized expression) -> PromQL


@dataclass(frozen=True)
class AlertCondition:
    """What a rule's alerts compare, per level, and what the compiled form leaves to the engine."""

    levels: list[Level]
    what: str  # the compared value in words, for the default summary ("the signal's p95 over 1h")
    annotations: dict[str, str] = field(default_factory=dict)  # facts the alert carries (horizon, baseline, ...)
    extra_condition: Callable[[str], str] | None = None  # ANDed to every level (a minimum sample count, ...)
    engine_only: list[str] = field(default_factory=list)  # checks only `rules-engine evaluate` makes, in words
    # Annotations that tell what the compiled alert leaves out (engine_only, for the reader of the alert): not
    # true of an alert the engine itself sends (`rules-engine monitor`), which leaves them out.
    caveats: tuple[str, ...] = ()

    def expr(self, level: Level, signal_ref: str, guard_ref: str | None = None, on: Sequence[str] = ()) -> str:
        """The level's condition on a signal reference, ANDed with the guard matched `on` the given labels."""
        text = f"{level.value_of(signal_ref)} {level.comparison} {number(level.bound)}"
        if self.extra_condition is not None:
            text = f"({text}) and ({self.extra_condition(signal_ref)})"
        if guard_ref is None:
            return text
        return f"({text}) and on({', '.join(on)}) ({guard_ref})"


def ladder_levels(direction: str, threshold: float, severity) -> list[tuple[str, float, str]]:
    """(severity, bound, comparison) per alert of a value compared with `threshold` in `direction`.

    The `low` level is the threshold itself (strict, as the engine's condition); higher levels are where the
    engine's ladder would name that severity; a level looser than the threshold is clamped to it.
    """
    strict = DIRECTION_OPERATORS[direction]
    if not isinstance(severity, SeverityLadder):
        return [(severity, threshold, strict)]
    levels = [("low", threshold, strict)]
    for name, bound in severity.levels():
        if severity.by == "value":
            value = bound
        else:
            value = threshold * bound if direction == "above" else threshold / bound
        value = float(f"{value:.12g}")
        looser = value <= threshold if direction == "above" else value >= threshold
        levels.append((name, threshold, strict) if looser else (name, value, LEVEL_OPERATORS[direction]))
    return levels
