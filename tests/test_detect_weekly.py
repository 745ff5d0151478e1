"""The weekly profile: the same hour on the same weekday a week before."""

import numpy as np
import numpy.typing as npt

from driftlock.detect import Detector, DetectorState
from driftlock.detect.state import new_state
from driftlock.detect.weekly import weekly_scores

FloatArray = npt.NDArray[np.float64]
DAY = 86_400.0
T0 = 1_400_025_600.0  # a midnight, UTC


def week_pattern(days: int) -> tuple[FloatArray, FloatArray]:
    """Ten-minute points; each weekday has its own level (weekends quiet), plus noise."""
    ts = T0 + 600.0 * np.arange(days * 144, dtype=np.float64)
    weekday = ((ts - T0) // DAY).astype(int) % 7
    levels = np.array([50.0, 52.0, 51.0, 53.0, 50.0, 10.0, 12.0])
    noise = np.random.default_rng(1).normal(0.0, 1.0, len(ts))
    return ts, levels[weekday] + noise


def test_nothing_to_say_in_the_first_week_then_last_weeks_envelope() -> None:
    ts, x = week_pattern(15)
    score, fields = weekly_scores(DetectorState(), ts, x, np.ones(len(x)))
    week = 7 * 144
    assert np.all(np.isnan(score[:week]))
    assert np.all(np.isfinite(score[week:]))
    # A typical week lies mostly inside the one before it, and never far outside.
    assert np.mean(score[week:] == 0.0) > 0.5
    assert np.max(score[week:]) < 5.0  # noise sigma 1: the 6 points of an hour span ~2.5
    assert fields["week_today"] == T0 // DAY + 14  # days since the epoch


def test_a_weekday_level_on_a_weekend_is_outside_last_weeks_envelope() -> None:
    ts, x = week_pattern(15)
    saturday = 12 * 144 + 72  # noon on day 12, a quiet weekday of the pattern
    x[saturday] = 50.0
    score, _ = weekly_scores(DetectorState(), ts, x, np.ones(len(x)))
    assert score[saturday] > 30.0


def test_the_same_scores_however_batched() -> None:
    ts, x = week_pattern(16)
    whole, whole_fields = weekly_scores(DetectorState(), ts, x, np.ones(len(x)))
    state, parts = DetectorState(), []
    for a, b in [(0, 1), (1, 1000), (1000, 1001), (1001, len(x))]:
        part, fields = weekly_scores(state, ts[a:b], x[a:b], np.ones(b - a))
        parts.append(part)
        state = new_state(**fields)
    assert np.concatenate(parts).tobytes() == whole.tobytes()
    assert whole_fields == {k: getattr(state, k) for k in whole_fields}


def test_weekend_drops_are_quiet_once_a_week_is_known() -> None:
    """The daily profile alone finds every Saturday unusual next to Friday; with last week's
    Saturday in the table the detector stays quiet from the third week on."""
    ts, x = week_pattern(28)
    _, found = Detector().detect(DetectorState(), x, ts)
    third_week = 14 * 144
    assert not [int(j) for j in found.anomalies if j >= third_week]
