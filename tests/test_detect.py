"""The detector ensemble: batch invariance, what it flags and how, calibration, refractory
period, seasonal profile, rules, warm-up, serialisable and bounded state."""

import threading
from typing import Any, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from driftlock.detect import (
    DETECTORS,
    Detections,
    Detector,
    DetectorConfig,
    DetectorState,
    ensemble,
)
from driftlock.detect.calibrate import BINS, EPOCH, MIN_HISTORY
from driftlock.detect.drift import RING
from driftlock.detect.ensemble import DRIFT, LEVEL, SEASONAL, _combine
from driftlock.detect.robust import CUSUM_UNIT, SHORT
from driftlock.detect.rules import FLAT_MIN
from driftlock.detect.seasonal import SLOTS_PER_DAY
from driftlock.state.records import decode_actor
from driftlock.wire.messages import AnomalyKind

FloatArray = npt.NDArray[np.float64]
K = AnomalyKind
DAY = 86_400.0
T0 = 1_400_025_600.0  # a midnight, UTC


class Run(NamedTuple):
    """Detections of a whole series, with anomaly positions relative to its start."""

    state: DetectorState
    score: FloatArray
    lower: FloatArray
    upper: FloatArray
    anomalies: list[int]
    kinds: list[AnomalyKind]
    detectors: list[list[str]]


def run(
    values: FloatArray,
    sizes: list[int] | None = None,
    *,
    ts: FloatArray | None = None,
    detector: Detector | None = None,
    state: DetectorState | None = None,
) -> Run:
    detector = detector or Detector()
    state = state or DetectorState()
    sizes = sizes if sizes is not None else [len(values)]
    assert sum(sizes) == len(values)
    parts: list[Detections] = []
    anomalies: list[int] = []
    kinds: list[AnomalyKind] = []
    agreed: list[list[str]] = []
    offset = 0
    for size in sizes:
        part = slice(offset, offset + size)
        state, found = detector.detect(state, values[part], None if ts is None else ts[part])
        parts.append(found)
        anomalies.extend(offset + int(j) for j in found.anomalies)
        kinds.extend(found.kinds)
        agreed.extend(found.detectors)
        offset += size
    return Run(
        state,
        np.concatenate([p.score for p in parts]),
        np.concatenate([p.lower for p in parts]),
        np.concatenate([p.upper for p in parts]),
        anomalies,
        kinds,
        agreed,
    )


def noise(seed: int, n: int, *, level: float = 100.0, sigma: float = 1.0) -> FloatArray:
    return np.asarray(np.random.default_rng(seed).normal(level, sigma, n), dtype=np.float64)


def minutes(n: int, step: float = 60.0) -> FloatArray:
    return T0 + step * np.arange(n, dtype=np.float64)


def eventful_series(seed: int, n: int = 6000) -> tuple[FloatArray, FloatArray]:
    """Five-minute points over about three weeks: a daily square wave with noise, spikes and
    dips, a day without its high phase, a level shift, a flat stretch and a gap; every
    detector and rule has something to do."""
    rng = np.random.default_rng(seed)
    ts = minutes(n, 300.0)
    slot = np.arange(n) % SLOTS_PER_DAY
    x = np.where((slot >= 100) & (slot < 200), 80.0, 20.0) + rng.normal(0.0, 2.0, n)
    spikes = rng.choice(np.arange(700, n), size=8, replace=False)
    x[spikes] += rng.choice([-60.0, 60.0], size=8)
    day = 8 * SLOTS_PER_DAY
    x[day + 100 : day + 200] = 20.0 + rng.normal(0.0, 2.0, 100)  # no high phase that day
    x[4000:4100] = x[3999]  # flat
    ts[4500:] += 6 * 3600.0  # six hours missing
    x[5000:] += 40.0  # level shift
    return x, ts


def random_sizes(seed: int, n: int) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while (left := n - sum(sizes)) > 0:
        size = 1 if rng.random() < 0.3 else int(rng.integers(2, 400))
        sizes.append(min(size, left))
    return sizes


def assert_same(a: Run, b: Run) -> None:
    for got, expected in ((a.score, b.score), (a.lower, b.lower), (a.upper, b.upper)):
        np.testing.assert_array_equal(got, expected)
        assert got.tobytes() == expected.tobytes()  # bit-identical, NaN and -0.0 included
    assert a.anomalies == b.anomalies
    assert a.kinds == b.kinds
    assert a.detectors == b.detectors
    assert a.state == b.state
    assert msgspec.msgpack.encode(a.state) == msgspec.msgpack.encode(b.state)


# -- batch invariance --


@pytest.fixture(scope="module")
def eventful() -> tuple[FloatArray, FloatArray, Run]:
    x, ts = eventful_series(0)
    return x, ts, run(x, ts=ts)


def test_the_eventful_series_exercises_every_detector(
    eventful: tuple[FloatArray, FloatArray, Run],
) -> None:
    _, _, whole = eventful
    voted = {name for names in whole.detectors for name in names}
    assert {"robust_level", "seasonal_profile", "missing_data", "flatline"} <= voted
    assert {K.SPIKE, K.DIP, K.MISSING_DATA, K.FLATLINE} <= set(whole.kinds)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_invariance_random_batch_sizes(
    seed: int, eventful: tuple[FloatArray, FloatArray, Run]
) -> None:
    x, ts, whole = eventful
    sizes = random_sizes(seed + 100, len(x))
    assert 1 in sizes and max(sizes) > SLOTS_PER_DAY  # single points, and batches over midnight
    assert_same(run(x, sizes, ts=ts), whole)


def test_batch_invariance_one_point_at_a_time(
    eventful: tuple[FloatArray, FloatArray, Run],
) -> None:
    x, ts, _ = eventful
    n = 3000
    assert_same(run(x[:n], [1] * n, ts=ts[:n]), run(x[:n], ts=ts[:n]))


def test_batch_invariance_at_warmup_epoch_and_midnight_edges(
    eventful: tuple[FloatArray, FloatArray, Run],
) -> None:
    """Cuts right around the warm-up, the calibration epochs and the day boundaries, where
    histories are shortest and references and envelopes change."""
    x, ts, whole = eventful
    cfg = DetectorConfig()
    edges = [
        1,
        cfg.warmup - 1,
        cfg.warmup,
        EPOCH - 1,
        EPOCH,
        EPOCH + 1,
        SLOTS_PER_DAY - 1,
        SLOTS_PER_DAY,
        2 * EPOCH,
        cfg.window + SHORT,
        MIN_HISTORY + cfg.warmup,
        2 * SLOTS_PER_DAY + 1,
        3999,
        4000,
        4500,
        5000,
    ]
    sizes = np.diff([0, *sorted(set(edges)), len(x)]).tolist()
    assert_same(run(x, sizes, ts=ts), whole)


def test_batch_invariance_without_timestamps() -> None:
    x = eventful_series(3)[0][:3000]
    whole = run(x)
    assert whole.anomalies
    assert_same(run(x, random_sizes(7, len(x))), whole)


def test_empty_batch_changes_nothing() -> None:
    detector = Detector()
    state, _ = detector.detect(DetectorState(), noise(0, 300), minutes(300))
    after, found = detector.detect(state, np.empty(0), np.empty(0))
    assert after == state
    assert len(found.score) == len(found.lower) == len(found.upper) == len(found.anomalies) == 0
    assert found.kinds == [] and found.detectors == []
    first, _ = detector.detect(DetectorState(), np.empty(0, dtype=np.float64))
    assert first == DetectorState()


def test_many_streams_in_one_call_score_as_each_alone() -> None:
    """`detect_many` is `detect` for each stream, bit for bit (states, scores, bands,
    anomalies, their kinds and detectors), whatever the mix of batch sizes, sensitivities,
    new and older states, and streams with nothing in a call."""
    detector = Detector()
    series = [eventful_series(seed) for seed in range(4)]
    n = len(series[0][0])
    sensitivities = [0.5, 0.2, 0.9, 0.5]
    alone = [DetectorState() for _ in series]
    together = [DetectorState() for _ in series]
    # Stream 3 carries on from a state older than the level drift: its histogram and
    # references lack that detector's row, which the call completes beside whole ones.
    x, ts = eventful_series(9)
    warm, _ = detector.detect(DetectorState(), x[:1000], ts[:1000] - 300_000.0)
    kept = len(DETECTORS) - 1
    older = warm.replaced(hist=warm.hist[: kept * BINS * 4], refs=warm.refs[: kept * 8])
    alone[3] = together[3] = older
    offsets = [0] * len(series)
    rng = np.random.default_rng(3)
    flagged = 0
    while min(offsets) < n:
        sizes = [min(int(rng.choice([0, 1, 1, 7, 120, 400])), n - o) for o in offsets]
        batches = [
            (x[o : o + size], ts[o : o + size])
            for (x, ts), o, size in zip(series, offsets, sizes, strict=True)
        ]
        scored = detector.detect_many(together, batches, sensitivities)
        for k, ((state, found), (x, ts)) in enumerate(zip(scored, batches, strict=True)):
            expected_state, expected = detector.detect(alone[k], x, ts, sensitivities[k])
            assert msgspec.msgpack.encode(state) == msgspec.msgpack.encode(expected_state)
            for got, want in (
                (found.score, expected.score),
                (found.lower, expected.lower),
                (found.upper, expected.upper),
            ):
                assert got.tobytes() == want.tobytes()
            assert found.anomalies.tolist() == expected.anomalies.tolist()
            assert found.kinds == expected.kinds
            assert found.detectors == expected.detectors
            flagged += len(found.anomalies)
            alone[k], together[k] = expected_state, state
        offsets = [o + size for o, size in zip(offsets, sizes, strict=True)]
    assert flagged >= 20
    assert detector.detect_many([], [], []) == []


# -- what is flagged, and how --


@pytest.mark.parametrize(("offset", "kind"), [(20.0, K.SPIKE), (-20.0, K.DIP)])
def test_isolated_spike_and_dip(offset: float, kind: AnomalyKind) -> None:
    detector = Detector()
    threshold = detector.config.threshold
    x = noise(3, 600)
    ts = minutes(600)
    state, before = detector.detect(DetectorState(), x[:500], ts[:500])
    assert len(before.anomalies) == 0
    x[500] = 100.0 + offset  # 20 sigma away from the level
    _, found = detector.detect(state, x[500:], ts[500:])
    assert list(found.anomalies) == [0]
    assert found.kinds == [kind]
    # 500 points: the learned shape model is not trained yet (its first boundary is at 512).
    assert found.detectors == [["robust_level"]]
    assert found.score[0] > 0.99 > threshold
    assert not found.lower[0] <= x[500] <= found.upper[0]
    # The band is around the level and the next points are normal again.
    assert found.lower[0] < 100.0 < found.upper[0]
    assert found.upper[0] - found.lower[0] < 20.0
    assert np.all(found.score[1:] < threshold)


NOISE = {
    "gaussian": lambda rng, n: rng.normal(-3.0, 0.2, n),
    "uniform": lambda rng, n: rng.uniform(8.0, 19.0, n),
    "laplace": lambda rng, n: rng.laplace(50.0, 3.0, n),
    "quantised": lambda rng, n: np.round(rng.normal(10.0, 2.0, n)),
}


@pytest.mark.parametrize(
    ("kind", "most"),
    [("gaussian", 2), ("uniform", 0), ("laplace", 80), ("quantised", 80)],
)
def test_stable_noise_is_quiet(kind: str, most: int) -> None:
    """40,000 points of iid noise. The floors sit about where light-tailed noise gets once in
    100,000 points, so Gaussian and uniform noise stay (nearly) silent. Heavier tails reach
    past the floors: there each detector is measured against the stream's own 99.9th
    percentile, and the refractory period keeps alerts to about one per 500 points at worst."""
    alerts = 0
    for seed in range(4):
        x = NOISE[kind](np.random.default_rng(seed), 10_000)
        found = run(x, [100] * 100, ts=minutes(len(x)))
        assert np.all(np.isfinite(found.score))
        assert np.all((found.score >= 0.0) & (found.score <= 1.0))
        alerts += len(found.anomalies)
    assert alerts <= most


def test_one_alert_per_event() -> None:
    """A burst of similar spikes alerts once: within the refractory period (100 points after
    any surprising point) a point must be ten times as surprising to alert again. After it,
    the next spike alerts."""
    x = noise(8, 1200)
    x[[600, 605, 610, 615]] += 20.0
    x[800] += 30.0
    found = run(x, ts=minutes(len(x)))
    assert found.anomalies == [600, 800]
    assert found.kinds == [K.SPIKE, K.SPIKE]


def test_the_refractory_period_lasts_at_most_a_day() -> None:
    """On an hourly stream 100 points are four days: a spike two days after another is a new
    event and alerts, while one an hour after it is still held back; without timestamps the
    period is counted in points only."""
    x = noise(8, 1200)
    x[[600, 601, 648]] += 20.0
    hourly = minutes(len(x), 3600.0)
    found = run(x, ts=hourly)
    assert found.anomalies == [600, 648]
    assert_same(run(x, random_sizes(5, len(x)), ts=hourly), found)
    assert run(x).anomalies == [600]


def test_the_level_drift_holds_back_only_its_own() -> None:
    """Its long run of small surprises at a slow shift (one alert, at its start) does not mute a
    spike the point-scale detectors see; its own surprise just after that spike stays held
    back by the spike's."""
    n = 200
    surprise = np.zeros((len(DETECTORS), n))
    surprise[DRIFT, 10:60] = 0.3
    surprise[[LEVEL, SEASONAL], 100] = 0.6
    surprise[DRIFT, 130] = 0.3
    none, nan = np.zeros(n, dtype=np.bool_), np.full(n, np.nan)
    empty = np.empty(0)
    score = _combine(
        surprise, none, none, ~none, empty, empty, empty, nan, 100, DAY, nan, nan, nan
    )[0]
    assert np.flatnonzero(score >= 0.5).tolist() == [10, 100]


def test_a_level_shift_alerts_once() -> None:
    x = noise(8, 1200)
    x[800:] += 20.0
    found = run(x, ts=minutes(len(x)))
    assert found.anomalies == [800]
    assert found.kinds == [K.SPIKE]  # a shift's first point is all there is to see yet
    # After spikes as large as the shift, its first point is nothing new; the second one,
    # with the CUSUM now agreeing, is, and is called what it is.
    x[[600, 605, 610, 615]] += 20.0
    found = run(x, ts=minutes(len(x)))
    assert found.anomalies == [600, 801]
    assert found.kinds == [K.SPIKE, K.LEVEL_SHIFT]
    assert found.detectors[1] == ["robust_level", "change_point"]


@pytest.mark.parametrize("shift", [3.0, -3.0], ids=["up", "down"])
def test_small_level_shift_is_found_by_the_change_point_detector(shift: float) -> None:
    """3 sigma: no single point is unusual, the CUSUM finds the shift a few points in."""
    x = noise(9, 1000)
    x[700:] += shift
    found = run(x, ts=minutes(len(x)))
    assert len(found.anomalies) == 1
    assert 700 < found.anomalies[0] < 710
    assert found.detectors == [["change_point"]]
    # Level shift or trend change: at 3 sigma the point that tips the CUSUM may or may not be
    # unusual on its own.
    assert found.kinds[0] in {K.LEVEL_SHIFT, K.TREND_CHANGE}


def test_gradual_drift_is_a_trend_change() -> None:
    x = noise(10, 1200)
    x[700:] += np.arange(500) * 0.05  # 0.05 sigma more every point
    found = run(x, ts=minutes(len(x)))
    assert found.kinds[:1] == [K.TREND_CHANGE]
    assert 700 < found.anomalies[0] < 800
    assert found.detectors[0] == ["change_point"]


def test_variance_change() -> None:
    rng = np.random.default_rng(11)
    x = 100.0 + rng.normal(0.0, 1.0, 1500)
    x[1000:] = 100.0 + rng.normal(0.0, 0.05, 500)  # twenty times quieter
    found = run(x, ts=minutes(len(x)))
    assert found.kinds == [K.VARIANCE_CHANGE]
    assert found.detectors == [["volatility"]]
    assert 1000 < found.anomalies[0] < 1000 + 2 * SHORT


def test_seasonal_profile_finds_what_the_level_cannot() -> None:
    """A daily square wave: the transitions are normal once a day has been seen, and a day
    without its high phase is flagged by the seasonal profile alone."""
    rng = np.random.default_rng(12)
    n = 6 * SLOTS_PER_DAY
    ts = minutes(n, 300.0)
    slot = np.arange(n) % SLOTS_PER_DAY
    x = np.where((slot >= 100) & (slot < 200), 80.0, 20.0) + rng.normal(0.0, 1.0, n)
    normal = run(x, ts=ts)
    # Only while learning: the first transition, and the CUSUM's daily high while its
    # calibration fills up.
    assert normal.anomalies[:1] == [100]
    assert all(j < 4 * SLOTS_PER_DAY for j in normal.anomalies)
    y = x.copy()
    missing = 4 * SLOTS_PER_DAY + 100
    y[missing : missing + 100] = 20.0 + rng.normal(0.0, 1.0, 100)
    found = run(y, ts=ts)
    late = [(j, d) for j, d in zip(found.anomalies, found.detectors, strict=True) if j >= missing]
    assert late[:1] == [(missing + 1, ["seasonal_profile"])]
    j = found.anomalies.index(missing + 1)
    # The expected band is the profile's envelope for that time of day: the high phase.
    assert found.lower[missing + 1] > 70.0 and found.upper[missing + 1] < 90.0
    assert found.kinds[j] == K.DIP


def test_flatline_and_missing_data() -> None:
    x = noise(13, 1000)
    ts = minutes(len(x))
    x[500:600] = x[499]
    ts[800:] += 3600.0  # an hour without points
    found = run(x, ts=ts)
    by_kind = dict(zip(found.kinds, found.anomalies, strict=True))
    assert by_kind[K.FLATLINE] == 499 + FLAT_MIN - 1  # the FLAT_MIN-th identical value
    assert by_kind[K.MISSING_DATA] == 800
    assert ["missing_data"] in found.detectors


def test_a_constant_never_fires_and_its_first_change_does() -> None:
    for level in (0.0, 5.0, -1e6):
        x = np.full(600, level)
        flat = run(x[:400], ts=minutes(400))
        assert flat.anomalies == []
        np.testing.assert_array_equal(flat.score, np.zeros(400))
        x[400:] = level + 1.0
        found = run(x, ts=minutes(len(x)))
        assert np.all(np.isfinite(found.score)) and np.all(found.score <= 1.0)
        assert found.anomalies[:1] == [400]


def test_gaps_are_not_flagged_in_a_stream_that_is_always_gappy() -> None:
    rng = np.random.default_rng(14)
    gaps = np.where(rng.random(3000) < 0.05, 3600.0, 60.0)
    ts = T0 + np.cumsum(gaps)
    found = run(noise(14, 3000), ts=ts)
    assert found.kinds.count(K.MISSING_DATA) <= 3  # records only: 10x usual, then 2x the last


# -- warm-up --


@pytest.mark.parametrize("sizes", [[200], [30, 170], [1] * 70 + [130]], ids=["one", "two", "ones"])
def test_nothing_scored_during_warmup(sizes: list[int]) -> None:
    warmup = DetectorConfig().warmup
    x = noise(5, 200)
    x[[0, 5, 20, 40, warmup - 1]] = [1e6, -1e6, 1e9, -50.0, 1e6]
    found = run(x, sizes, ts=minutes(200))
    np.testing.assert_array_equal(found.score[:warmup], np.zeros(warmup))
    assert all(j >= warmup for j in found.anomalies)


def test_custom_warmup() -> None:
    detector = Detector(DetectorConfig(warmup=10))
    x = noise(6, 40)
    x[[9, 10]] = [1e3, 1e3 + 1e-3]
    found = run(x, detector=detector)
    assert found.score[9] == 0.0
    assert found.anomalies == [10]


# -- state --


@pytest.mark.parametrize("cut", [1, 50, 1700, 4999])
def test_state_round_trips_through_msgpack(cut: int) -> None:
    x, ts = eventful_series(12)
    first = run(x[:cut], ts=ts[:cut])
    data = msgspec.msgpack.encode(first.state)
    decoded = msgspec.msgpack.decode(data, type=DetectorState)
    assert decoded == first.state
    from_decoded = run(x[cut:], ts=ts[cut:], state=decoded)
    whole = run(x, ts=ts)
    np.testing.assert_array_equal(from_decoded.score, whole.score[cut:])
    assert from_decoded.state == whole.state


def test_state_stays_bounded() -> None:
    x, ts = eventful_series(13)
    cfg = DetectorConfig()
    final = run(x, [1000, 1, 4999], ts=ts).state
    assert final.count == len(x)
    assert len(final.values) == len(final.diffs) == (cfg.window + SHORT) * 8
    assert len(final.devs) == cfg.window * 8
    assert len(final.surprise) == len(final.surprise_ts) == cfg.refractory * 8
    assert len(final.surprise_fast) == cfg.refractory * 8
    assert len(final.drift_ring) == RING * 4
    # 9.2 kB of it the daily table, 1.7 kB the weekly one, 0.8 kB each the refractory
    # period's surprises (with and without the level drift's part) and their times, 0.8 kB
    # the level drift's ring.
    assert len(msgspec.msgpack.encode(final)) < 27_000


def test_a_state_from_before_the_ensemble_still_decodes_and_runs() -> None:
    """Records written by the single robust-level detector held count, values, diffs and run."""
    old = {"count": 300, "values": noise(15, 128).tobytes(), "diffs": b"", "run": 0}
    state = decode_actor(msgspec.msgpack.encode({"version": 1, "detector": old})).detector
    assert state.count == 300 and len(state.values) == 128 * 8
    x = noise(15, 200)
    x[150] += 50.0
    found = run(x, ts=minutes(200), state=state)
    assert found.anomalies == [150]
    assert found.state.count == 500


def test_a_state_without_surprise_times_still_runs() -> None:
    """A state from before the refractory period had a time limit: its surprises' times are
    unknown, so they hold back by their count of points only."""
    x = noise(17, 900)
    x[[600, 650]] += 20.0
    ts = minutes(len(x), 3600.0)
    first = run(x[:640], ts=ts[:640])
    old = first.state.replaced(surprise_ts=b"")
    assert run(x[640:], ts=ts[640:], state=old).anomalies == []
    assert run(x[640:], ts=ts[640:], state=first.state).anomalies == [10]


def test_a_state_without_the_fast_surprises_still_runs() -> None:
    """A state from before the level drift's part was kept apart: its combined surprises hold
    back every point, as they did then."""
    x, ts = eventful_series(18)
    first = run(x[:3000], ts=ts[:3000])
    old = first.state.replaced(surprise_fast=b"")
    found = run(x[3000:], ts=ts[3000:], state=old)
    assert len(found.state.surprise_fast) == len(found.state.surprise)
    stand_in = first.state.replaced(surprise_fast=first.state.surprise)
    assert_same(run(x[3000:], ts=ts[3000:], state=stand_in), found)


def test_a_state_without_pivots_carries_on_as_one_with_them() -> None:
    """A state from before the rolling medians' pivots were kept (or with wrong ones) gives
    the same results, and the same state once the call has returned."""
    x, ts = eventful_series(19)
    first = run(x[:3000], ts=ts[:3000])
    assert len(first.state.pivots) == 24
    found = run(x[3000:], ts=ts[3000:], state=first.state)
    wrong = np.frombuffer(first.state.pivots) + 1.0
    for pivots in (b"", wrong.tobytes()):
        old = first.state.replaced(pivots=pivots)
        assert_same(run(x[3000:], ts=ts[3000:], state=old), found)
        for sizes in ([1] * 300, [100] * 3):
            assert_same(
                run(x[3000:3300], sizes, ts=ts[3000:3300], state=old),
                run(x[3000:3300], ts=ts[3000:3300], state=first.state),
            )


def _whole_table(day: bytes, lo: bytes, hi: bytes, rows: int) -> tuple[bytes, bytes, bytes]:
    """A table as states before stored only rows in use were written: every row, in its
    place (day % rows), empty ones marked -1."""
    days = np.frombuffer(day, dtype=np.int64)
    slots = len(lo) // 4 // max(1, len(days))
    full_day = np.full(rows, -1, dtype=np.int64)
    full_lo = np.full((rows, slots), np.inf, dtype=np.float32)
    full_hi = np.full((rows, slots), -np.inf, dtype=np.float32)
    for i, d in enumerate(days):
        full_day[d % rows] = d
        full_lo[d % rows] = np.frombuffer(lo, dtype=np.float32)[i * slots : (i + 1) * slots]
        full_hi[d % rows] = np.frombuffer(hi, dtype=np.float32)[i * slots : (i + 1) * slots]
    return full_day.tobytes(), full_lo.tobytes(), full_hi.tobytes()


def test_a_young_stream_stores_no_envelope_and_carries_on_identically() -> None:
    """Until the table holds an earlier day, today's envelope knows nothing: a state stores
    none (it was a third of a new stream's), and one that stored it, as states from before
    did, carries on identically."""
    x, ts = eventful_series(19, 4000)  # from a midnight, five minutes apart: 288 a day
    nothing = np.full(2 * SLOTS_PER_DAY, np.nan, dtype=np.float32).tobytes()
    for cut in (1, 150, 287):
        first = run(x[:cut], ts=ts[:cut])
        assert first.state.envelope == b""
        old = first.state.replaced(envelope=nothing)
        assert_same(
            run(x[cut:], ts=ts[cut:], state=old), run(x[cut:], ts=ts[cut:], state=first.state)
        )
    yesterday_known = run(x[:700], ts=ts[:700]).state
    assert len(yesterday_known.envelope) == 8 * SLOTS_PER_DAY


def test_a_state_with_whole_tables_runs_as_its_stored_rows() -> None:
    """States keep only the profile tables' rows that hold a day (a young stream's state is a
    third as large); a state from before, which stored every row, carries on identically."""
    x, ts = eventful_series(19, 4000)
    one = run(x[:1], ts=ts[:1]).state
    assert len(one.season_lo) == 4 * SLOTS_PER_DAY
    assert len(msgspec.msgpack.encode(one)) < 6_000
    for cut in (1, 150, 700, 3000):
        first = run(x[:cut], ts=ts[:cut])
        season = _whole_table(
            first.state.season_day, first.state.season_lo, first.state.season_hi, 4
        )
        week = _whole_table(first.state.week_day, first.state.week_lo, first.state.week_hi, 8)
        old = first.state.replaced(
            season_day=season[0],
            season_lo=season[1],
            season_hi=season[2],
            week_day=week[0],
            week_lo=week[1],
            week_hi=week[2],
        )
        assert_same(
            run(x[cut:], ts=ts[cut:], state=old), run(x[cut:], ts=ts[cut:], state=first.state)
        )


def test_int_scalars_do_not_compile_the_call_again() -> None:
    """A state or config built in Python with ints where floats are stored runs the same
    compiled call (a second version would compile for a minute in the middle of a batch)."""
    x, ts = noise(20, 1000), minutes(1000)
    state = run(x[:900], ts=ts[:900]).state
    Detector().detect(state, x[900:], ts[900:])
    whole: Any = ensemble._whole  # the numba dispatcher
    compiled = len(whole.signatures)
    ints = msgspec.structs.replace(
        state, last_ts=int(ts[899]), gap_record=int(state.gap_record), season_width=7
    )
    detector = Detector(DetectorConfig(refractory_seconds=86_400, quantile=0.999))
    detector.detect(ints, x[900:], ts[900:])
    assert len(whole.signatures) == compiled


def test_cusum_is_stored_in_integer_fixed_point() -> None:
    x = noise(16, 800)
    x[700:] += 3.0
    state = run(x).state
    assert isinstance(state.cusum_up, int) and state.cusum_up > 50 * CUSUM_UNIT


# -- configuration --


def test_detector_names() -> None:
    assert DETECTORS == (
        "robust_level",
        "seasonal_profile",
        "change_point",
        "volatility",
        "learned_shape",
        "level_drift",
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 7}, "window must be at least 8"),
        ({"window": 0}, "window must be at least 8"),
        ({"warmup": 1}, "warmup must be at least 2"),
        ({"threshold": 0.0}, r"threshold must be in \(0, 1\)"),
        ({"threshold": 1.0}, r"threshold must be in \(0, 1\)"),
        ({"threshold": -0.5}, r"threshold must be in \(0, 1\)"),
        ({"quantile": 0.4}, r"quantile must be in \[0.5, 1\)"),
        ({"quantile": 1.0}, r"quantile must be in \[0.5, 1\)"),
        ({"season_days": 0}, r"season_days must be in 1..14"),
        ({"refractory": 0}, r"refractory must be in 1..10000"),
        ({"refractory_seconds": 0.0}, "refractory_seconds must be positive"),
    ],
)
def test_config_validation(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DetectorConfig(**kwargs)  # type: ignore[arg-type]


def test_defaults_match_the_settings() -> None:
    from driftlock.settings import load_settings

    assert load_settings().detector == DetectorConfig()


def test_a_detection_thread_scores_as_the_event_loop_does() -> None:
    """Each has its own compiled entry (one keeps the GIL, one lets it go): same results."""
    x, ts = eventful_series(0)
    x, ts = x[:1500], ts[:1500]
    on_loop = run(x, [300, 1, 1199], ts=ts)
    on_thread: list[Run] = []
    thread = threading.Thread(target=lambda: on_thread.append(run(x, [300, 1, 1199], ts=ts)))
    thread.start()
    thread.join()
    assert_same(on_thread[0], on_loop)
