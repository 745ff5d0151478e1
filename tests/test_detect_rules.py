"""Custom rules and sensitivity: validation with field paths, glob matching, vectorised
evaluation (crossings, rate, absence), and what a sensitivity does to a borderline spike."""

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from driftlock.detect import Detector, DetectorState
from driftlock.detect.custom_rules import Rule, evaluate
from driftlock.detect.tuning import DetectionConfig, Override, problems, resolve

FloatArray = npt.NDArray[np.float64]
T0 = 1_400_025_600.0


def times(n: int, step: float = 10.0) -> FloatArray:
    return T0 + step * np.arange(n, dtype=np.float64)


def test_threshold_rule_fires_on_crossings_only() -> None:
    rule = Rule(above=10.0)
    values = np.array([5.0, 11.0, 12.0, 9.0, 13.0, 14.0])
    hits = evaluate([rule], times(6), values, None, None)
    assert [h.point for h in hits] == [1, 4]
    assert hits[0].label == "rule:0" and hits[0].expected == (10.0, 10.0)
    # The point before the batch was already beyond: no new crossing at its start.
    assert [h.point for h in evaluate([rule], times(6), values[1:].copy()[:1], T0 - 10, 12.0)] == []


def test_below_and_above_together_make_a_band() -> None:
    rule = Rule(name="band", below=0.0, above=100.0)
    values = np.array([50.0, -1.0, 50.0, 101.0])
    hits = evaluate([rule], times(4), values, T0 - 10.0, 50.0)
    assert [(h.point, h.label, h.expected) for h in hits] == [
        (1, "rule:band", (0.0, 100.0)),
        (3, "rule:band", (0.0, 100.0)),
    ]


def test_rate_and_absence() -> None:
    ts = np.array([T0, T0 + 10, T0 + 20, T0 + 500, T0 + 510])
    values = np.array([0.0, 1.0, 50.0, 51.0, 52.0])
    rate = evaluate([Rule(max_rate=1.0)], ts, values, T0 - 10.0, 0.0)
    assert [h.point for h in rate] == [2]
    assert rate[0].expected == (1.0 - 10.0, 1.0 + 10.0)
    absent = evaluate([Rule(absent_s=300.0)], ts, values, T0 - 10.0, 0.0)
    assert [h.point for h in absent] == [3]
    # A new stream has no previous point: nothing to measure its first point against.
    assert evaluate([Rule(absent_s=1.0, max_rate=0.001)], ts[:1], values[:1], None, None) == []


def test_hits_are_ordered_by_point_then_rule() -> None:
    rules = [Rule(above=5.0), Rule(max_rate=0.1)]
    hits = evaluate(rules, times(3), np.array([0.0, 10.0, 0.0]), None, None)
    assert [(h.point, h.rule) for h in hits] == [(1, 0), (1, 1), (2, 1)]


def test_the_same_hits_however_batched() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(0.0, 5.0, 300)
    ts = times(300) + rng.uniform(0, 30, 300).cumsum()
    rules = [Rule(above=8.0, below=-8.0), Rule(max_rate=1.0), Rule(absent_s=35.0)]
    whole = [(h.point, h.rule) for h in evaluate(rules, ts, values, None, None)]
    assert whole  # the case exercises the rules
    cut, prev_t, prev_v = [], None, None
    for a, b in [(0, 1), (1, 77), (77, 78), (78, 300)]:
        cut += [
            (a + h.point, h.rule) for h in evaluate(rules, ts[a:b], values[a:b], prev_t, prev_v)
        ]
        prev_t, prev_v = float(ts[b - 1]), float(values[b - 1])
    assert cut == whole


def test_resolution_globs_and_first_override_wins() -> None:
    config = DetectionConfig(
        sensitivity=0.3,
        overrides=[
            Override(pattern="api:*", sensitivity=0.9),
            Override(pattern="*", sensitivity=0.1),
        ],
        rules=[Rule(metric="api:lat?ncy", above=1.0), Rule(metric="db:*", below=0.0)],
    )
    api = resolve(config, "api:latency")
    assert api.sensitivity == 0.9 and [r.metric for r in api.rules] == ["api:lat?ncy"]
    db = resolve(config, "db:conns")
    assert db.sensitivity == 0.1 and [r.metric for r in db.rules] == ["db:*"]
    assert resolve(None, "x").sensitivity == 0.5 and resolve(None, "x").rules == []


def test_config_round_trips_through_json_and_old_documents_decode() -> None:
    config = DetectionConfig(rules=[Rule(metric="cpu", above=90.0)])
    data = msgspec.json.encode(config)
    assert msgspec.json.decode(data, type=DetectionConfig) == config
    assert msgspec.json.decode(b"{}", type=DetectionConfig) == DetectionConfig()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (DetectionConfig(sensitivity=1.5), [("sensitivity", "must be between 0 and 1")]),
        (
            DetectionConfig(overrides=[Override(pattern="a b", sensitivity=-1.0)]),
            [
                ("overrides[0].pattern", "must be 1-200 of A-Z a-z 0-9 _ : - and * ? [ ] !"),
                ("overrides[0].sensitivity", "must be between 0 and 1"),
            ],
        ),
        (
            DetectionConfig(rules=[Rule(above=1.0), Rule(metric="m")]),
            [("rules[1]", "needs at least one of above, below, max_rate, absent_s")],
        ),
        (
            DetectionConfig(rules=[Rule(above=1.0, below=2.0, max_rate=0.0, absent_s=-5.0)]),
            [
                ("rules[0].max_rate", "must be greater than 0"),
                ("rules[0].absent_s", "must be greater than 0"),
                ("rules[0].below", "must be less than above"),
            ],
        ),
        (
            DetectionConfig(rules=[Rule(above=float("nan"))]),
            [("rules[0].above", "must be a finite number")],
        ),
    ],
)
def test_problems_name_the_field(config: DetectionConfig, expected: list[tuple[str, str]]) -> None:
    assert problems(config) == expected


def _borderline() -> tuple[FloatArray, FloatArray]:
    values = np.random.default_rng(7).normal(100.0, 1.0, 2000)
    values[1900] = 105.2  # a bit beyond what 1,900 points of this noise reached
    return values, times(2000, 60.0)


def _flagged(sensitivity: float) -> list[int]:
    values, ts = _borderline()
    state, found = Detector().detect(DetectorState(), values[:1800], ts[:1800], sensitivity)
    assert len(found.anomalies) == 0 or sensitivity > 0.5
    _, found = Detector().detect(state, values[1800:], ts[1800:], sensitivity)
    return [1800 + int(j) for j in found.anomalies]


def test_sensitivity_moves_what_counts() -> None:
    assert 1900 in _flagged(0.5)
    assert 1900 not in _flagged(0.0)
    assert len(_flagged(1.0)) >= len(_flagged(0.5)) >= len(_flagged(0.0))


def test_default_sensitivity_is_the_shipped_behaviour() -> None:
    values, ts = _borderline()
    _, a = Detector().detect(DetectorState(), values, ts)
    _, b = Detector().detect(DetectorState(), values, ts, 0.5)
    assert a.score.tobytes() == b.score.tobytes()
