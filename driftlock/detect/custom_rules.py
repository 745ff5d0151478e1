"""Custom rules: a tenant's own conditions on a metric (or a glob of metrics), evaluated by the
same actors as the detectors, over a whole batch at once, reported as `kind: rule`.

A rule holds one or more conditions, each checked on every point:

- `above` / `below`: the value is above / below a static threshold. Reported when the value
  crosses it (the first point beyond it after one within), not once per point beyond;
- `max_rate`: |Δvalue / Δt| since the previous point exceeds this many units per second;
- `absent_s`: the point arrived more than this many seconds after the previous one (absence
  is seen when data resumes: actors run on arriving data, not on a clock).

Pure functions of the batch and the stream's previous point: no I/O, no clock.
"""

import fnmatch
import math
import re
from typing import NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

PATTERN_HELP = "must be 1-200 of A-Z a-z 0-9 _ : - and * ? [ ] !"
PATTERN = re.compile(r"[A-Za-z0-9_:*?\[\]!-]{1,200}")
"""Metric ids are `[A-Za-z0-9_:-]`; a pattern adds the glob characters `* ? [ ] !`."""
MAX_RULES = 100


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    metric: str = "*"
    """Glob over metric ids (`*`, `?`, `[...]`)."""
    name: str = ""
    """Shown in the anomaly's `detectors` as `rule:<name>` (default: the rule's position)."""
    above: float | None = None
    below: float | None = None
    max_rate: float | None = None
    absent_s: float | None = None

    def matches(self, metric: str) -> bool:
        return fnmatch.fnmatchcase(metric, self.metric)


class RuleHit(NamedTuple):
    point: int
    """Position in the batch."""
    rule: int
    """Position of the rule in the list it was evaluated with."""
    label: str
    expected: tuple[float, float]


def rule_problems(rule: Rule, path: str) -> list[tuple[str, str]]:
    """What is wrong with a rule, as (field path, message) pairs; empty when it is valid."""
    problems = []
    if not PATTERN.fullmatch(rule.metric):
        problems.append((f"{path}.metric", PATTERN_HELP))
    if len(rule.name) > 100:
        problems.append((f"{path}.name", "must be at most 100 characters"))
    conditions = (rule.above, rule.below, rule.max_rate, rule.absent_s)
    if all(c is None for c in conditions):
        problems.append((path, "needs at least one of above, below, max_rate, absent_s"))
    for field in ("above", "below", "max_rate", "absent_s"):
        value = getattr(rule, field)
        if value is not None and not math.isfinite(value):
            problems.append((f"{path}.{field}", "must be a finite number"))
    for field in ("max_rate", "absent_s"):
        value = getattr(rule, field)
        if value is not None and math.isfinite(value) and value <= 0:
            problems.append((f"{path}.{field}", "must be greater than 0"))
    if rule.above is not None and rule.below is not None and not rule.below < rule.above:
        # below ≥ above would fire on every point: surely a mistake.
        problems.append((f"{path}.below", "must be less than above"))
    return problems


def evaluate(
    rules: list[Rule],
    ts: FloatArray,
    values: FloatArray,
    prev_ts: float | None,
    prev_value: float | None,
) -> list[RuleHit]:
    """Every rule hit in a batch, in (point, rule) order; `prev_*` is the stream's point before
    the batch (None for a new stream)."""
    n = len(values)
    if not rules or n == 0:
        return []
    before_v = np.concatenate(([np.nan if prev_value is None else prev_value], values[:-1]))
    before_t = np.concatenate(([np.nan if prev_ts is None else prev_ts], ts[:-1]))
    hits = []
    for k, rule in enumerate(rules):
        fired = _fired(rule, ts, values, before_t, before_v)
        label = f"rule:{rule.name or k}"
        for j in np.flatnonzero(fired):
            band = _expected(rule, values[j], before_v[j], ts[j] - before_t[j])
            hits.append(RuleHit(int(j), k, label, band))
    hits.sort(key=lambda h: (h.point, h.rule))
    return hits


def _fired(
    rule: Rule, ts: FloatArray, values: FloatArray, before_t: FloatArray, before_v: FloatArray
) -> BoolArray:
    fired = np.zeros(len(values), dtype=bool)
    if rule.above is not None or rule.below is not None:
        beyond = _beyond(rule, values)
        # Crossing only: the previous point (if any) was within the thresholds.
        fired |= beyond & ~_beyond(rule, before_v)
    dt = ts - before_t
    with np.errstate(invalid="ignore", divide="ignore"):
        if rule.max_rate is not None:
            rate = np.abs(values - before_v) / dt
            fired |= (dt > 0) & (rate > rule.max_rate)
        if rule.absent_s is not None:
            fired |= dt > rule.absent_s
    return fired


def _beyond(rule: Rule, values: FloatArray) -> BoolArray:
    out = np.zeros(len(values), dtype=bool)
    with np.errstate(invalid="ignore"):
        if rule.above is not None:
            out |= values > rule.above
        if rule.below is not None:
            out |= values < rule.below
    return out


def _expected(rule: Rule, value: float, before: float, dt: float) -> tuple[float, float]:
    """The band the rule allows at the point (the value itself where a side is open)."""
    if rule.above is not None or rule.below is not None:
        low = rule.below if rule.below is not None else min(value, rule.above or value)
        high = rule.above if rule.above is not None else max(value, rule.below or value)
        return float(low), float(high)
    if rule.max_rate is not None and math.isfinite(before) and dt > 0:
        reach = rule.max_rate * dt
        return float(before - reach), float(before + reach)
    return float(value), float(value)
