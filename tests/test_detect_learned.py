"""The learned shape model (k-means on short difference vectors): warm-up, training only at
epoch boundaries on earlier points, determinism, and what it sees that order statistics miss."""

import numpy as np
import numpy.typing as npt

from driftlock.detect import Detector, DetectorState
from driftlock.detect.learned import (
    CLUSTERS,
    DIMS,
    MIN_TRAIN,
    RETRAIN,
    TRAIN,
    _squared,
    _vectors,
    learned_scores,
    trained_scores,
)
from driftlock.detect.state import floats, new_state

T0 = 1_400_025_600.0
FloatArray = npt.NDArray[np.float64]


def _scores(series: FloatArray, sizes: list[int]) -> tuple[FloatArray, bytes]:
    state = DetectorState()
    out = []
    offset = 0
    for size in sizes:
        part = series[offset : offset + size]
        history = floats(state.values)
        raw, model = learned_scores(state, np.concatenate((history, part)), size, np.ones(size))
        out.append(raw)
        # The ensemble keeps the last values; here the whole past is history.
        state = new_state(
            count=state.count + size,
            values=np.concatenate((history, part))[-300:].tobytes(),
            centroids=model,
        )
        offset += size
    return np.concatenate(out), state.centroids


def test_no_say_before_training_then_a_model_of_fixed_size() -> None:
    x = np.random.default_rng(1).normal(0.0, 1.0, 1200)
    raw, model = _scores(x, [1200])
    # The first model is trained at the first boundary with MIN_TRAIN vectors behind it.
    first = next(b for b in range(RETRAIN, 1200, RETRAIN) if b - DIMS >= MIN_TRAIN)
    assert np.all(np.isnan(raw[:first]))
    assert np.all(np.isfinite(raw[first:]))
    assert len(model) == 8 * (CLUSTERS * DIMS + 1)


def test_same_scores_and_model_however_batched() -> None:
    x = np.random.default_rng(2).normal(0.0, 1.0, 1000)
    whole, model = _scores(x, [1000])
    cut, cut_model = _scores(x, [1, 127, 200, 3, 300, 369])
    assert whole.tobytes() == cut.tobytes()
    assert model == cut_model


def test_compiled_first_training_is_learned_scores() -> None:
    """The first model, trained in the compiled call, is numpy's bit for bit (norms, stable
    ranks and all), on noise, steps with tied norms and a batch past several boundaries."""
    rng = np.random.default_rng(8)
    for x in (
        rng.normal(0.0, 1.0, 2000),
        np.repeat(rng.integers(0, 3, 200).astype(np.float64), 10),
        np.cumsum(rng.normal(size=2000)) * 1e3,
    ):
        for count, size in ((500, 20), (0, 600), (400, 1200), (511, 1)):
            state = DetectorState(count=count)
            series, scale = x[: count + size], rng.uniform(0.5, 2.0, size)
            raw, stored = learned_scores(state, series, size, scale)
            compiled, trained, retrained = trained_scores(b"", series, size, scale, count)
            assert stored and retrained
            assert raw.tobytes() == compiled.tobytes() and stored == trained.tobytes()


def test_compiled_retraining_is_learned_scores() -> None:
    """The ensemble's compiled path gives learned_scores' scores and model bit for bit,
    across one and several retraining boundaries."""
    rng = np.random.default_rng(5)
    x = np.sin(np.arange(3000) / 15.0) * 5 + rng.normal(0.0, 1.0, 3000)
    _, model = _scores(x[:700], [700])
    assert model
    for count, size in ((700, 100), (1000, 24), (1000, 1), (1023, 1), (1100, 1300), (900, 5)):
        state = new_state(count=count, centroids=model)
        series = x[: count + size]
        scale = rng.uniform(0.5, 2.0, size)
        raw, stored = learned_scores(state, series, size, scale)
        compiled, trained, retrained = trained_scores(model, series, size, scale, count)
        assert raw.tobytes() == compiled.tobytes()
        assert stored == (trained.tobytes() if retrained else model)
        assert retrained == (stored != model)


def test_a_new_shape_inside_the_normal_range_scores_high() -> None:
    rng = np.random.default_rng(3)
    x = np.sin(np.arange(1200) / 20.0) * 10 + rng.normal(0.0, 0.1, 1200)
    x[1100:1106] = x[1100] + np.array([3.0, -3.0, 3.0, -3.0, 3.0, -3.0])  # a rattle
    raw, _ = _scores(x, [1200])
    assert np.nanmax(raw[1100:1106]) > 10 * np.nanmedian(raw[900:1100])


def test_scores_use_only_earlier_points() -> None:
    """The whole ensemble is online: changing the future never changes a past score."""
    rng = np.random.default_rng(4)
    ts = T0 + 60.0 * np.arange(2000, dtype=np.float64)
    a = rng.normal(50.0, 1.0, 2000)
    b = a.copy()
    b[1500:] += rng.normal(0.0, 30.0, 500)
    detector = Detector()
    _, first = detector.detect(DetectorState(), a, ts)
    _, second = detector.detect(DetectorState(), b, ts)
    assert first.score[:1500].tobytes() == second.score[:1500].tobytes()
    assert first.score[1500:].tobytes() != second.score[1500:].tobytes()


def test_deterministic_across_runs() -> None:
    x = np.random.default_rng(5).normal(0.0, 1.0, 900)
    raw, model = _scores(x, [900])
    again, again_model = _scores(x.copy(), [900])
    assert raw.tobytes() == again.tobytes()
    assert model == again_model


def test_compiled_training_distances_equal_numpys() -> None:
    """The training's squared distances are what numpy's einsum and matrix product gave, bit
    for bit (models trained before the compiled loops must score alike), ties and exact zeros
    included."""
    rng = np.random.default_rng(5)
    for i in range(200):
        series = np.cumsum(rng.normal(size=300) * rng.choice([1e-3, 1.0, 1e3]))
        if i % 2:
            series = series.round(1)  # repeated vectors, distances of exactly 0
        x = _vectors(series)[-TRAIN:]
        centroids = x[rng.choice(TRAIN, CLUSTERS)].copy()
        if i % 3:
            centroids += rng.normal(size=(CLUSTERS, DIMS)) * 0.1
        d = (
            np.einsum("ij,ij->i", x, x)[:, None]
            - 2.0 * (x @ centroids.T)
            + np.einsum("ij,ij->i", centroids, centroids)[None, :]
        )
        expected = np.maximum(d, 0.0, out=d)
        assert np.array_equal(_squared(centroids, x).view(np.int64), expected.view(np.int64))
