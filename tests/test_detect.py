"""RobustDetector: batch invariance, what it flags and how, warm-up, serialisable state."""

from typing import NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from driftlock.detect import Detections, DetectorConfig, RobustDetector, RobustState
from driftlock.detect.robust import LEVEL_SHIFT_RUN
from driftlock.wire.messages import AnomalyKind

FloatArray = npt.NDArray[np.float64]
K = AnomalyKind


class Run(NamedTuple):
    """Detections of a whole series, with anomaly positions relative to its start."""

    state: RobustState
    score: FloatArray
    lower: FloatArray
    upper: FloatArray
    anomalies: list[int]
    kinds: list[AnomalyKind]


def run(
    values: FloatArray,
    sizes: list[int] | None = None,
    *,
    detector: RobustDetector | None = None,
    state: RobustState | None = None,
) -> Run:
    detector = detector or RobustDetector()
    state = state or RobustState()
    sizes = sizes if sizes is not None else [len(values)]
    assert sum(sizes) == len(values)
    parts: list[Detections] = []
    anomalies: list[int] = []
    kinds: list[AnomalyKind] = []
    offset = 0
    for size in sizes:
        state, found = detector.detect(state, values[offset : offset + size])
        parts.append(found)
        anomalies.extend(offset + int(j) for j in found.anomalies)
        kinds.extend(found.kinds)
        offset += size
    return Run(
        state,
        np.concatenate([p.score for p in parts]),
        np.concatenate([p.lower for p in parts]),
        np.concatenate([p.upper for p in parts]),
        anomalies,
        kinds,
    )


def noise(seed: int, n: int, *, level: float = 100.0, sigma: float = 1.0) -> FloatArray:
    return np.random.default_rng(seed).normal(level, sigma, n)


def eventful_series(seed: int, n: int = 3000) -> FloatArray:
    """Gaussian noise, a few spikes and dips, and a level shift."""
    rng = np.random.default_rng(seed)
    x = rng.normal(50.0, 2.0, n)
    spikes = rng.choice(np.arange(200, n), size=6, replace=False)
    x[spikes] += rng.choice([-40.0, 40.0], size=6)
    x[2000:] += 30.0
    return x


def random_sizes(seed: int, n: int) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while (left := n - sum(sizes)) > 0:
        size = 1 if rng.random() < 0.3 else int(rng.integers(2, 300))
        sizes.append(min(size, left))
    return sizes


def assert_same(a: Run, b: Run) -> None:
    for got, expected in ((a.score, b.score), (a.lower, b.lower), (a.upper, b.upper)):
        np.testing.assert_array_equal(got, expected)
        assert got.tobytes() == expected.tobytes()  # bit-identical, NaN and -0.0 included
    assert a.anomalies == b.anomalies
    assert a.kinds == b.kinds
    assert a.state == b.state


# -- batch invariance --


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_batch_invariance_random_batch_sizes(seed: int) -> None:
    x = eventful_series(seed)
    whole = run(x)
    sizes = random_sizes(seed + 100, len(x))
    assert 1 in sizes
    assert max(sizes) > 1
    # Not vacuous: the series has spikes and a level shift to classify.
    assert K.LEVEL_SHIFT in whole.kinds
    assert {K.SPIKE, K.DIP} & set(whole.kinds)
    assert_same(run(x, sizes), whole)


def test_batch_invariance_one_point_at_a_time() -> None:
    x = eventful_series(7)
    assert_same(run(x, [1] * len(x)), run(x))


def test_batch_invariance_at_window_edges() -> None:
    """Cuts right around the window and warm-up lengths, where history is shortest."""
    x = eventful_series(11)
    cfg = DetectorConfig()
    cuts = [1, 1, cfg.warmup - 3, 1, 1, cfg.window - cfg.warmup - 1, 1, 1, cfg.window]
    sizes = [*cuts, len(x) - sum(cuts)]
    assert_same(run(x, sizes), run(x))


def test_empty_batch_changes_nothing() -> None:
    detector = RobustDetector()
    state, _ = detector.detect(RobustState(), noise(0, 300))
    after, found = detector.detect(state, np.empty(0, dtype=np.float64))
    assert after == state
    assert len(found.score) == len(found.lower) == len(found.upper) == len(found.anomalies) == 0
    assert found.kinds == []
    first, _ = detector.detect(RobustState(), np.empty(0, dtype=np.float64))
    assert first == RobustState()


# -- what is flagged --


@pytest.mark.parametrize(("offset", "kind"), [(20.0, K.SPIKE), (-20.0, K.DIP)])
def test_isolated_spike_and_dip(offset: float, kind: AnomalyKind) -> None:
    detector = RobustDetector()
    threshold = detector.config.threshold
    x = noise(3, 600)
    state, before = detector.detect(RobustState(), x[:500])
    assert len(before.anomalies) == 0
    x[500] = 100.0 + offset  # 20 sigma away from the level
    _, found = detector.detect(state, x[500:])
    assert list(found.anomalies) == [0]
    assert found.kinds == [kind]
    assert found.score[0] >= threshold
    assert found.score[0] > 0.99  # z ≈ 20: 1 - 1/z² ≈ 0.9975
    assert not found.lower[0] <= x[500] <= found.upper[0]
    # The band is around the level and the next points are normal again.
    assert found.lower[0] < 100.0 < found.upper[0]
    assert np.all(found.score[1:] < threshold)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_no_anomaly_in_stable_noise(seed: int) -> None:
    found = run(noise(seed, 10_000, level=-3.0, sigma=0.2))
    assert found.anomalies == []
    assert np.all(np.isfinite(found.score))
    assert np.all((found.score >= 0.0) & (found.score < DetectorConfig().threshold))


@pytest.mark.parametrize("sizes", [[200], [30, 170], [1] * 70 + [130]], ids=["one", "two", "ones"])
def test_nothing_scored_during_warmup(sizes: list[int]) -> None:
    warmup = DetectorConfig().warmup
    x = noise(5, 200)
    x[[0, 5, 20, 40, warmup - 1]] = [1e6, -1e6, 1e9, -50.0, 1e6]
    x[warmup] = 1e6  # the first scored point
    found = run(x, sizes)
    np.testing.assert_array_equal(found.score[:warmup], np.zeros(warmup))
    assert found.anomalies == [warmup]
    assert found.score[warmup] >= DetectorConfig().threshold


def test_custom_warmup() -> None:
    detector = RobustDetector(DetectorConfig(warmup=10))
    x = noise(6, 40)
    x[[9, 10]] = 1e3
    found = run(x, detector=detector)
    assert found.score[9] == 0.0
    assert found.anomalies == [10]


@pytest.mark.parametrize(
    ("shift", "first_kind"), [(20.0, K.SPIKE), (-20.0, K.DIP)], ids=["up", "down"]
)
def test_level_shift_from_third_point_across_batches(shift: float, first_kind: AnomalyKind) -> None:
    assert LEVEL_SHIFT_RUN == 3
    x = noise(8, 700)
    x[500:] += shift
    whole = run(x)
    assert whole.anomalies[:LEVEL_SHIFT_RUN] == [500, 501, 502]
    assert whole.kinds[:3] == [first_kind, first_kind, K.LEVEL_SHIFT]
    # Every later point of the contiguous run stays a level shift until the median catches up.
    run_length = next(
        (i for i, j in enumerate(whole.anomalies) if j != 500 + i), len(whole.anomalies)
    )
    assert run_length > 10
    assert set(whole.kinds[2:run_length]) == {K.LEVEL_SHIFT}

    # Batches cut inside the run: the run carries over in the state.
    side = 1 if shift > 0 else -1
    detector = RobustDetector()
    state, a = detector.detect(RobustState(), x[:501])
    assert (list(a.anomalies), a.kinds, state.run) == ([500], [first_kind], side)
    state, b = detector.detect(state, x[501:502])
    assert (list(b.anomalies), b.kinds, state.run) == ([0], [first_kind], 2 * side)
    state, c = detector.detect(state, x[502:])
    assert c.kinds[0] == K.LEVEL_SHIFT
    assert_same(run(x, [501, 1, 198]), whole)


def test_run_resets_on_a_gap_or_a_side_change() -> None:
    x = noise(9, 600)
    x[[500, 502, 504]] += 20.0  # isolated: gaps between them
    x[[550, 552]] += 20.0
    x[551] -= 20.0  # contiguous, but alternating sides
    found = run(x)
    assert found.anomalies == [500, 502, 504, 550, 551, 552]
    assert found.kinds == [K.SPIKE, K.SPIKE, K.SPIKE, K.SPIKE, K.DIP, K.SPIKE]
    assert found.state.run == 0  # the last point was not flagged


def test_run_resets_when_a_batch_ends_unflagged() -> None:
    x = noise(10, 600)
    x[[500, 501]] += 20.0
    detector = RobustDetector()
    state, _ = detector.detect(RobustState(), x[:502])
    assert state.run == 2
    state, _ = detector.detect(state, x[502:503])
    assert state.run == 0
    x2 = x.copy()
    x2[503:506] += 20.0
    _, found = detector.detect(state, x2[503:])
    assert found.kinds[:3] == [K.SPIKE, K.SPIKE, K.LEVEL_SHIFT]


@pytest.mark.parametrize("level", [0.0, 5.0, -1e6])
def test_constant_series_then_change(level: float) -> None:
    x = np.full(300, level)
    flat = run(x[:200])
    assert flat.anomalies == []
    np.testing.assert_array_equal(flat.score, np.zeros(200))

    x[200:] = level + 1.0
    found = run(x)
    assert np.all(np.isfinite(found.score))
    assert np.all(np.isfinite(found.lower[2:]))
    assert np.all(np.isfinite(found.upper[2:]))
    assert found.anomalies[:3] == [200, 201, 202]
    assert found.kinds[:3] == [K.SPIKE, K.SPIKE, K.LEVEL_SHIFT]
    assert np.all(found.score[found.anomalies] <= 1.0)


# -- state --


@pytest.mark.parametrize("cut", [1, 50, 1700, 2999])
def test_state_round_trips_through_msgpack(cut: int) -> None:
    x = eventful_series(12)
    detector = RobustDetector()
    first = run(x[:cut], detector=detector)
    data = msgspec.msgpack.encode(first.state)
    decoded = msgspec.msgpack.decode(data, type=RobustState)
    assert decoded == first.state
    from_decoded = run(x[cut:], detector=detector, state=decoded)
    from_original = run(x[cut:], detector=detector, state=first.state)
    assert_same(from_decoded, from_original)
    # ... and the same as never having stopped.
    whole = run(x)
    np.testing.assert_array_equal(from_decoded.score, whole.score[cut:])
    assert from_decoded.state == whole.state


def test_state_stays_bounded() -> None:
    cfg = DetectorConfig(window=16, warmup=4)
    final = run(eventful_series(13), [1000, 1, 1999], detector=RobustDetector(cfg)).state
    assert final.count == 3000
    assert len(final.values) == len(final.diffs) == 16 * 8


# -- configuration --


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 7}, "window must be at least 8"),
        ({"window": 0}, "window must be at least 8"),
        ({"warmup": 1}, "warmup must be at least 2"),
        ({"threshold": 0.0}, r"threshold must be in \(0, 1\)"),
        ({"threshold": 1.0}, r"threshold must be in \(0, 1\)"),
        ({"threshold": -0.5}, r"threshold must be in \(0, 1\)"),
        ({"threshold": 1.5}, r"threshold must be in \(0, 1\)"),
    ],
)
def test_config_validation(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DetectorConfig(**kwargs)  # type: ignore[arg-type]


def test_config_limits_and_band() -> None:
    cfg = DetectorConfig(window=8, warmup=2, threshold=0.75)
    assert cfg.band_z == pytest.approx(2.0)
    assert DetectorConfig().band_z == pytest.approx(1 / np.sqrt(0.03))
