"""The level-drift detector: no say until its ring has drifts, a slow decline stands out where a
daily rhythm does not, bounded ring, batch invariance, and states from before it."""

import msgspec
import numpy as np
import numpy.typing as npt

from driftlock.detect import DETECTORS, Detector, DetectorConfig, DetectorState
from driftlock.detect.calibrate import BINS
from driftlock.detect.drift import HISTORY, LAG, MIN_RING, RING, SPAN, drift_scores
from driftlock.detect.state import floats

T0 = 1_400_025_600.0
DAY = 288
"""Five-minute points in a day."""
FloatArray = npt.NDArray[np.float64]


def _scores(series: FloatArray, sizes: list[int]) -> tuple[FloatArray, DetectorState]:
    state = DetectorState()
    out = []
    offset = 0
    for size in sizes:
        part = series[offset : offset + size]
        history = np.concatenate((floats(state.values), part))
        raw, fields = drift_scores(state, history, size)
        out.append(raw)
        # The ensemble keeps at least HISTORY values.
        state = state.replaced(
            count=state.count + size,
            values=history[-HISTORY:].tobytes(),
            **fields,
        )
        offset += size
    return np.concatenate(out), state


def test_no_say_until_the_ring_holds_drifts() -> None:
    x = np.random.default_rng(1).normal(0.0, 1.0, 1000)
    raw, state = _scores(x, [1000])
    # The first drift is recorded at the first SPAN boundary at or after LAG.
    first = [p for p in range(LAG, 1000) if (p + 1) % SPAN == 0][MIN_RING - 1] + 1
    assert np.all(np.isnan(raw[:first]))
    assert np.all(np.isfinite(raw[first:]))
    recorded = [p for p in range(LAG, 1000) if (p + 1) % SPAN == 0]
    assert len(state.drift_ring) == 4 * len(recorded)


def test_a_slow_decline_stands_out_a_daily_rhythm_does_not() -> None:
    rng = np.random.default_rng(2)
    n = 10 * DAY
    x = 3.0 * np.sin(2 * np.pi * np.arange(n) / DAY) + rng.normal(0.0, 1.0, n)
    start = 9 * DAY
    # Ten hours sliding down by half the daily swing an hour, then staying there.
    x[start : start + 120] -= 0.25 * np.arange(1, 121)
    x[start + 120 :] -= 30.0
    raw, _ = _scores(x, [n])
    usual = np.nanmax(raw[2 * DAY : start])
    assert usual < 4.5  # the rhythm is in the ring: never beyond the detector's floor
    assert np.nanmax(raw[start : start + 120]) > 2 * usual


def test_the_ring_stays_bounded() -> None:
    x = np.random.default_rng(3).normal(0.0, 1.0, (RING + 50) * SPAN)
    _, state = _scores(x, [len(x)])
    assert len(state.drift_ring) == RING * 4


def test_batch_invariant() -> None:
    x = np.random.default_rng(4).normal(0.0, 1.0, 3000).cumsum()
    whole, final = _scores(x, [3000])
    for sizes in ([1] * 300 + [2700], [7, 500, 13, 1000, 1480], [100] * 30):
        raw, state = _scores(x, sizes)
        np.testing.assert_array_equal(raw, whole)
        assert state.drift_ring == final.drift_ring


def test_a_state_from_before_the_level_drift_still_runs() -> None:
    """Its calibration rows and references are the other detectors'; the new one starts empty
    with its prior, and the stream carries on."""
    rng = np.random.default_rng(5)
    x = rng.normal(50.0, 2.0, 1500)
    ts: FloatArray = T0 + 300.0 * np.arange(1500, dtype=np.float64)
    detector = Detector()
    state, _ = detector.detect(DetectorState(), x[:1000], ts[:1000])
    old = state.replaced(
        hist=state.hist[: (len(DETECTORS) - 1) * BINS * 4],
        refs=state.refs[: (len(DETECTORS) - 1) * 8],
        drift_ring=b"",
    )
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=DetectorState)
    x[1200] += 40.0
    after, found = detector.detect(decoded, x[1000:], ts[1000:])
    assert list(found.anomalies) == [200]
    assert len(after.hist) == len(DETECTORS) * BINS * 4
    assert len(after.refs) == len(DETECTORS) * 8


def test_a_short_rolling_window_still_keeps_what_the_drift_reads() -> None:
    """The stored values cover the drift's HISTORY even when the rolling window is shorter."""
    detector = Detector(DetectorConfig(window=8))
    x = np.random.default_rng(6).normal(0.0, 1.0, 700).cumsum()
    ts: FloatArray = T0 + 300.0 * np.arange(700, dtype=np.float64)
    _, whole = detector.detect(DetectorState(), x, ts)
    state, scores = DetectorState(), []
    for start in range(0, 700, 5):
        state, found = detector.detect(state, x[start : start + 5], ts[start : start + 5])
        scores.append(found.score)
    assert len(state.values) == HISTORY * 8
    np.testing.assert_array_equal(np.concatenate(scores), whole.score)


def test_the_ring_order_is_kept_and_a_state_without_it_carries_on() -> None:
    """The stored order is the ring's stable sort, ties included (whole numbers and a flat
    stretch record many equal drifts); a state without it, or with a wrong one, gives the
    same scores and the same state as with it."""
    rng = np.random.default_rng(7)
    x = rng.normal(50.0, 2.0, 4000).round(0)
    x[1000:2000] = 50.0
    ts: FloatArray = T0 + 300.0 * np.arange(4000, dtype=np.float64)
    detector = Detector()
    state, _ = detector.detect(DetectorState(), x[:3000], ts[:3000])
    ring = np.frombuffer(state.drift_ring, dtype=np.float32)
    order = np.frombuffer(state.drift_order, dtype=np.uint8)
    assert len(ring) == RING
    np.testing.assert_array_equal(order, np.argsort(ring, kind="stable"))
    after, found = detector.detect(state, x[3000:], ts[3000:])
    for stored in (b"", order[::-1].tobytes()):
        old = state.replaced(drift_order=stored)
        again, same = detector.detect(old, x[3000:], ts[3000:])
        assert again == after
        np.testing.assert_array_equal(same.score, found.score)
