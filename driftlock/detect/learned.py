"""`learned_shape`: a small k-means model of the stream's short-term shape, as Netdata runs per
metric. Each point is described by its last DIMS differences (x_t - x_{t-1}, …); the model is
CLUSTERS centroids of those vectors, and the raw score is a point's distance to the nearest
centroid in units of the median distance of the training vectors to theirs. It sees shapes
the order statistics do not: a sudden oscillation, a step pattern the stream never makes.

Online and deterministic: the model is retrained every RETRAIN points, at absolute stream
positions, on the vectors of the TRAIN points before the boundary, with a fixed number of
Lloyd iterations from the previous model (the first time from the vectors at evenly spaced
ranks of their norm), so a point is always scored by the same model however the stream was
batched. Until MIN_TRAIN vectors exist (the warm-up) it has no say (NaN).
"""

import math

import numpy as np

from driftlock.detect.jit import fma, jit
from driftlock.detect.rolling import FloatArray
from driftlock.detect.state import DetectorState, floats

DIMS = 6
CLUSTERS = 4
TRAIN = 256
MIN_TRAIN = 64
ITERATIONS = 6
UPDATE_ITERATIONS = 1
RETRAIN = 512
"""Points between retrainings: the short-term shape changes slowly, and training is the
model's whole cost."""
SCALE_FLOOR = 0.1
"""The distance unit is never below this fraction of the robust scale of the values: a stream
whose steps were all alike does not make its first different step a thousand-unit event."""
_TINY = 1e-12


def learned_scores(
    state: DetectorState, series: FloatArray, n: int, scale: FloatArray
) -> tuple[FloatArray, bytes]:
    """Raw scores for the last n entries of `series` (history + batch), given each point's
    robust scale; returns them and the model to store (centroids, then the distance unit).

    In numpy, the reference the detector's compiled `trained_scores` is tested against bit
    for bit."""
    model = stored = floats(state.centroids)
    if len(series) <= DIMS:
        return np.full(n, np.nan), state.centroids
    # Vector r (steps r .. r + DIMS - 1) ends at series entry r + DIMS; the batch's point j is
    # entry len(series) - n + j.
    first_row = len(series) - n - DIMS
    raw = np.full(n, np.nan)
    first = (-state.count) % RETRAIN or RETRAIN
    a = 0
    for b in [*range(first, n, RETRAIN), n]:
        if len(model):
            lo = max(a, -first_row)  # the stream's first points have no full vector
            if lo < b:
                raw[lo:b] = _distance(model, series, first_row + lo, scale[lo:b])
        if b < n or (state.count + n) % RETRAIN == 0:
            # The boundary point b is entry len(series) - n + b: train on the vectors before it.
            end = first_row + b
            if end >= MIN_TRAIN:
                model = _train(_vectors(series)[max(0, end - TRAIN) : end], model)
        a = b
    return raw, model.tobytes() if model is not stored else state.centroids


@jit
def trained_scores(
    stored_model: bytes, series: FloatArray, n: int, scale: FloatArray, count: int
) -> tuple[FloatArray, FloatArray, bool]:
    """`learned_scores` compiled: the raw scores, the model and whether it was retrained (the
    stored one is kept otherwise)."""
    model = np.frombuffer(stored_model, dtype=np.float64).copy()
    raw = np.empty(n)
    raw.fill(np.nan)
    retrained = False
    if len(series) <= DIMS:
        return raw, model, retrained
    first_row = len(series) - n - DIMS
    first = (-count) % RETRAIN or RETRAIN
    a, b = 0, min(first, n)
    while True:  # b: each retraining boundary in the batch, then n
        if len(model):
            lo = max(a, -first_row)
            if lo < b:
                raw[lo:b] = _distance(model, series, first_row + lo, scale[lo:b])
        if b < n or (count + n) % RETRAIN == 0:
            end = first_row + b
            if end >= MIN_TRAIN:
                model = _retrain(series, max(0, end - TRAIN), end, model)
                retrained = True
        if b == n:
            return raw, model, retrained
        a, b = b, min(b + RETRAIN, n)


@jit
def _retrain(series: FloatArray, lo: int, end: int, model: FloatArray) -> FloatArray:
    """`_train` on vectors lo .. end - 1 of `series` (compiled): from the previous model, or
    the first time from the vectors at evenly spaced ranks of their norm (the norms summed
    as einsum sums them, the ranks a stable sort's, as `_train` ranks them)."""
    x = np.empty((end - lo, DIMS))
    for r in range(end - lo):
        for d in range(DIMS):
            x[r, d] = series[lo + r + d + 1] - series[lo + r + d]  # np.diff's steps
    if len(model):
        centroids, iterations = model[:-1].copy().reshape(CLUSTERS, DIMS), UPDATE_ITERATIONS
    else:
        norms = np.empty(len(x))
        for r in range(len(x)):
            norms[r] = _norm2(x[r])
        order = np.argsort(norms, kind="mergesort")
        centroids, iterations = np.empty((CLUSTERS, DIMS)), ITERATIONS
        for c in range(CLUSTERS):
            centroids[c] = x[order[int((c + 0.5) * len(x) / CLUSTERS)]]
    unit = _fit(centroids, x, iterations)
    out = np.empty(CLUSTERS * DIMS + 1)
    out[:-1] = centroids.ravel()
    out[-1] = _TINY if unit < _TINY else unit  # max(unit, _TINY), NaN kept
    return out


def _vectors(series: FloatArray) -> FloatArray:
    """Row r holds steps r .. r + DIMS - 1 (a read-only view, no copy)."""
    steps = np.diff(series)
    # What as_strided makes, without its cost (a third of a retraining's Python overhead).
    rows = np.ndarray((len(steps) - DIMS + 1, DIMS), np.float64, steps, 0, (steps.itemsize,) * 2)
    rows.flags.writeable = False
    return rows


@jit
def _distance(model: FloatArray, series: FloatArray, first: int, scale: FloatArray) -> FloatArray:
    """Distance of vectors first, first + 1, … (vector r: steps r .. r + DIMS - 1) to their
    nearest centroid, in the model's unit. Summed in a fixed order, not by a matrix product:
    a point's score must not depend on how many came with it."""
    unit = model[-1]
    out = np.empty(len(scale))
    for j in range(len(scale)):
        best = np.inf
        for c in range(CLUSTERS):
            total = 0.0
            for d in range(DIMS):
                step = series[first + j + d + 1] - series[first + j + d]
                diff = step - model[c * DIMS + d]
                total += diff * diff
            best = min(best, total)
        out[j] = np.sqrt(best) / np.maximum(unit, SCALE_FLOOR * scale[j])
    return out


@jit
def _squared(centroids: FloatArray, x: FloatArray) -> FloatArray:
    """Squared distances [vector, centroid], as (|x|² - 2 x·c) + |c|² clipped at 0 (only for
    training, whose input is the same whatever the batches). Bit for bit what numpy computed
    here before: squared norms summed in two lanes (einsum's order), dot products as one
    chain of fused multiply-adds (the BLAS kernel's)."""
    cc = np.empty(CLUSTERS)
    for c in range(CLUSTERS):
        cc[c] = _norm2(centroids[c])
    d = np.empty((x.shape[0], CLUSTERS))
    for r in range(x.shape[0]):
        xx = _norm2(x[r])
        for c in range(CLUSTERS):
            dot = 0.0
            for i in range(DIMS):
                dot = fma(x[r, i], centroids[c, i], dot)
            v = (xx - 2.0 * dot) + cc[c]
            d[r, c] = 0.0 if v < 0.0 else v  # np.maximum(v, 0.0): NaN and -0.0 stay
    return d


@jit
def _norm2(v: FloatArray) -> float:
    even = odd = 0.0
    for i in range(0, DIMS, 2):
        even += v[i] * v[i]
        odd += v[i + 1] * v[i + 1]
    return even + odd


@jit
def _assign(centroids: FloatArray, x: FloatArray, d: FloatArray) -> None:
    """One Lloyd step given the squared distances d [vector, centroid], in place: each vector
    goes to its nearest centroid (the first of equals; NaN wins, as argmin), and a centroid
    that has vectors moves to their mean. The sums run over every vector in order, adding
    0 × the others (as the membership matrix product did: NaN and inf count alike)."""
    rows = x.shape[0]
    nearest = np.empty(rows, np.int64)
    for r in range(rows):
        best, k = d[r, 0], 0
        if not math.isnan(best):
            for c in range(1, CLUSTERS):
                if math.isnan(d[r, c]):
                    k = c
                    break
                if d[r, c] < best:
                    best, k = d[r, c], c
        nearest[r] = k
    for c in range(CLUSTERS):
        count = 0.0
        for r in range(rows):
            count += nearest[r] == c
        if count > 0:
            for i in range(DIMS):
                total = 0.0
                for r in range(rows):
                    total += (1.0 if nearest[r] == c else 0.0) * x[r, i]
                centroids[c, i] = total / count


@jit
def _fit(centroids: FloatArray, x: FloatArray, iterations: int) -> float:
    """`iterations` Lloyd steps (in place), then the median distance to the nearest centroid."""
    for _ in range(iterations):
        _assign(centroids, x, _squared(centroids, x))
    return _median_distance(_squared(centroids, x))


@jit
def _median_distance(d: FloatArray) -> float:
    """np.median of the distances to the nearest centroid (NaN if any is)."""
    rows = d.shape[0]
    nearest = np.empty(rows)
    for r in range(rows):
        best = d[r, 0]
        for c in range(1, CLUSTERS):
            if math.isnan(d[r, c]) or d[r, c] < best:
                best = d[r, c]
            if math.isnan(best):
                break
        if math.isnan(best):
            return np.nan
        nearest[r] = np.sqrt(best)
    return float(np.median(nearest))


def _train(x: FloatArray, model: FloatArray) -> FloatArray:
    """Lloyd's k-means: the first time from the vectors at evenly spaced ranks of their norm,
    later from the previous centroids (online k-means: the model follows the stream, and a
    retraining costs one iteration). A centroid that loses all its vectors keeps its
    place. Returns the centroids and the median distance."""
    if len(model):
        centroids, iterations = model[:-1].reshape(CLUSTERS, DIMS).copy(), UPDATE_ITERATIONS
    else:
        order = np.argsort(np.einsum("ij,ij->i", x, x), kind="stable")
        picks = order[((np.arange(CLUSTERS) + 0.5) * len(x) / CLUSTERS).astype(np.intp)]
        centroids, iterations = x[picks].copy(), ITERATIONS
    unit = _fit(centroids, x, iterations)
    return np.append(centroids.ravel(), max(unit, _TINY))
