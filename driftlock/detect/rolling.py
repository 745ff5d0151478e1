"""Rolling order statistics over `history + batch`, the way every detector reads its past.

Medians and maxima are exact order statistics: unlike running sums they carry no
floating-point history, so a value computed for a point is bit-identical however the stream
was cut into batches, as long as the history holds the same points.
"""

import bottleneck as bn
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def rolling_median(a: FloatArray, window: int) -> FloatArray:
    """Median of the `window` entries ending at each entry (fewer at the start; NaN ignored)."""
    if len(a) == 0:
        return a
    return np.asarray(bn.move_median(a, min(window, len(a)), min_count=1), dtype=np.float64)


def rolling_max(a: FloatArray, window: int) -> FloatArray:
    if len(a) == 0:
        return a
    return np.asarray(bn.move_max(a, min(window, len(a)), min_count=1), dtype=np.float64)


def before_each_point(rolling: FloatArray, n: int, lag: int = 1) -> FloatArray:
    """For each of the last n entries of a rolling statistic, its value `lag` entries earlier
    (the window that ends `lag` points before the point); NaN where there is none."""
    start = len(rolling) - n - lag
    if start >= 0:
        return rolling[start : start + n]
    missing = min(-start, n)
    return np.concatenate((np.full(missing, np.nan), rolling[: n - missing]))


def extend(history: FloatArray, new: FloatArray) -> FloatArray:
    return np.concatenate((history, new)) if len(history) else new
