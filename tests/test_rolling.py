"""The compiled sliding order statistics against bottleneck's, on windows of every shape:
NaN entries, lags, trends and ties, growing windows at a stream's start, one point or many."""

import bottleneck as bn
import numpy as np
import numpy.typing as npt

from driftlock.detect.rolling import (
    max_before,
    median_before,
    pivoted_median_before,
    sorted_mad,
    sorted_median,
    swap_in,
)

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


def test_ordered_window_median_and_mad_equal_numpys() -> None:
    """The level drift's ring, held in order as drifts come and go: its median and MAD are
    np.median's, bit for bit."""
    rng = np.random.default_rng(11)
    for _ in range(300):
        size = int(rng.integers(1, 200))
        ring = rng.normal(size=size).round(int(rng.integers(0, 4)))  # ties when rounded
        held = np.sort(ring)
        for _ in range(20):
            new = round(float(rng.normal()), 2)
            swap_in(held, size, float(ring[0]), new)
            ring = np.append(ring[1:], new)
            assert np.array_equal(held, np.sort(ring))
            center = float(np.median(ring))
            assert sorted_median(held, size) == center
            assert sorted_mad(held, size, center) == np.median(np.abs(ring - center))


def test_one_point_median_equals_numpys() -> None:
    """A one-point call selects its median in place: np.median of the window's entries (NaN
    left out), bit for bit."""
    rng = np.random.default_rng(13)
    for _ in range(500):
        length = int(rng.integers(1, 400))
        a = rng.normal(size=length).round(int(rng.integers(0, 3)))
        a[rng.random(length) < rng.choice([0.0, 0.1, 0.9])] = np.nan
        window, lag = int(rng.integers(1, 300)), int(rng.integers(0, 5))
        end = length - lag
        held = a[max(0, end - window) : max(0, end)]
        held = held[~np.isnan(held)]
        expected = np.median(held) if len(held) else np.nan
        got = median_before(a, length - 1, 1, window, lag)
        assert np.array_equal(got, [expected], equal_nan=True)


def low_middle(a: FloatArray, end: int, window: int) -> float:
    """The ((m + 1) // 2)-th smallest of the m entries (NaN left out) ending before `end`."""
    held = np.sort(a[max(0, end - window) : max(0, end)])
    held = held[~np.isnan(held)]
    return float(held[(len(held) - 1) // 2]) if len(held) else np.nan


def test_pivoted_medians_equal_the_others_whatever_the_pivot() -> None:
    """Given the first window's low middle, or a wrong or unknown pivot, the medians are
    `median_before`'s bit for bit, and the pivot returned is the next window's low middle."""
    rng = np.random.default_rng(17)
    for _ in range(600):
        length = int(rng.integers(2, 600))
        a = rng.normal(size=length).round(int(rng.integers(0, 3)))  # ties when rounded
        if rng.random() < 0.5:
            a = np.cumsum(a)
        a[rng.random(length) < rng.choice([0.0, 0.02, 0.3, 0.9])] = np.nan
        window, lag = int(rng.integers(65, 300)), int(rng.integers(1, 20))
        n = int(rng.integers(1, 3)) if rng.random() < 0.5 else int(rng.integers(1, length))
        first = length - n
        right = low_middle(a, first - lag + 1, window)
        for pivot in (right, np.nan, float(rng.normal()), right + 1e-9):
            got, following = pivoted_median_before(a, first, n, window, lag, pivot)
            assert np.array_equal(got, median_before(a, first, n, window, lag), equal_nan=True)
            expected = low_middle(a, length - lag + 1, window)
            assert np.array_equal([following], [expected], equal_nan=True)
