"""A tenant's detection settings: a sensitivity, per-metric-pattern overrides of it, and custom
rules. Stored as JSON (one document per tenant), resolved per stream when a batch is applied.

Sensitivity is in [0, 1]; 0.5 is the shipped behaviour. It moves every detector's calibration
reference by up to SENSITIVITY_OCTAVES octaves: at 1 a point half as far out as the stream's
99.9th percentile already counts, at 0 it must be twice as far. The stored state does not
change shape or meaning, so a stream can change sensitivity at any time.
"""

import fnmatch
import math

import msgspec

from driftlock.detect.custom_rules import MAX_RULES, PATTERN, PATTERN_HELP, Rule, rule_problems

BUCKET = "detect"
"""KV bucket `<prefix>_detect`: key = tenant id, value = its DetectionConfig as JSON."""
DEFAULT_SENSITIVITY = 0.5
SENSITIVITY_OCTAVES = 1.0
MAX_OVERRIDES = 100


class Override(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pattern: str
    """Glob over metric ids; the first matching override wins."""
    sensitivity: float


class DetectionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sensitivity: float = DEFAULT_SENSITIVITY
    overrides: list[Override] = msgspec.field(default_factory=list)
    rules: list[Rule] = msgspec.field(default_factory=list)


class StreamTuning(msgspec.Struct, frozen=True):
    """What applies to one stream."""

    sensitivity: float = DEFAULT_SENSITIVITY
    rules: list[Rule] = msgspec.field(default_factory=list)


DEFAULT_TUNING = StreamTuning()


def reference_shift(sensitivity: float) -> float:
    """Octaves by which references are lowered (negative: raised)."""
    return (2.0 * sensitivity - 1.0) * SENSITIVITY_OCTAVES


def resolve(config: DetectionConfig | None, metric: str) -> StreamTuning:
    if config is None:
        return DEFAULT_TUNING
    sensitivity = config.sensitivity
    for override in config.overrides:
        if fnmatch.fnmatchcase(metric, override.pattern):
            sensitivity = override.sensitivity
            break
    return StreamTuning(sensitivity, [r for r in config.rules if r.matches(metric)])


def problems(config: DetectionConfig) -> list[tuple[str, str]]:
    """Every semantic problem of a config as (field path, message); types are msgspec's."""
    found = _sensitivity_problems(config.sensitivity, "sensitivity")
    if len(config.overrides) > MAX_OVERRIDES:
        found.append(("overrides", f"at most {MAX_OVERRIDES} overrides"))
    for i, override in enumerate(config.overrides):
        if not PATTERN.fullmatch(override.pattern):
            found.append((f"overrides[{i}].pattern", PATTERN_HELP))
        found += _sensitivity_problems(override.sensitivity, f"overrides[{i}].sensitivity")
    if len(config.rules) > MAX_RULES:
        found.append(("rules", f"at most {MAX_RULES} rules"))
    for i, rule in enumerate(config.rules):
        found += rule_problems(rule, f"rules[{i}]")
    return found


def _sensitivity_problems(value: float, path: str) -> list[tuple[str, str]]:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        return [(path, "must be between 0 and 1")]
    return []
