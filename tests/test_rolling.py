"""The compiled sliding order statistics against bottleneck's, on windows of every shape:
NaN entries, lags, trends and ties, growing windows at a stream's start, one point or many."""

import bottleneck as bn
import numpy as np
import numpy.typing as npt

from driftlock.detect.rolling import max_before, median_before

FloatArray = npt.NDArray[np.float64]


def reference(moving: FloatArray, first: int, n: int, lag: int) -> FloatArray:
    return np.array([moving[first + j - lag] if first + j - lag >= 0 else np.nan for j in range(n)])


def test_sliding_median_and_max_equal_bottlenecks_on_random_windows() -> None:
    rng = np.random.default_rng(7)
    for _ in range(500):
        length = int(rng.integers(1, 600))
        a = rng.normal(size=length).round(int(rng.integers(0, 3)))  # ties when rounded
        if rng.random() < 0.5:
            a = np.cumsum(a)  # a trend: entries leave from one end of the order
        a[rng.random(length) < rng.choice([0.0, 0.02, 0.3])] = np.nan
        window, lag = int(rng.integers(1, 300)), int(rng.integers(0, 20))
        n = int(rng.integers(1, length + 1))
        first = length - n
        medians = bn.move_median(a, min(window, length), min_count=1)
        maxima = bn.move_max(a, min(window, length), min_count=1)
        assert np.array_equal(
            median_before(a, first, n, window, lag),
            reference(medians, first, n, lag),
            equal_nan=True,
        )
        assert np.array_equal(
            max_before(a, first, n, window, lag), reference(maxima, first, n, lag), equal_nan=True
        )
