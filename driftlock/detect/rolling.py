"""Rolling order statistics over `history + batch`, the way every detector reads its past.

Medians and maxima are exact order statistics: unlike running sums they carry no
floating-point history, so a value computed for a point is bit-identical however the stream
was cut into batches, as long as the history holds the same points. NaN entries are ignored
(a window of NaN only has NaN as its statistic).
"""

import math

import numpy as np
import numpy.typing as npt

from driftlock.detect.jit import jit

FloatArray = npt.NDArray[np.float64]


@jit
def median_before(a: FloatArray, first: int, n: int, window: int, lag: int) -> FloatArray:
    """For the n entries from index `first` on, the median of the `window` entries of `a`
    ending `lag` entries before each (fewer at the start; NaN where there are none).

    A sorted copy of the window slides along: one binary search and one shift per entry
    that enters or leaves, instead of a sort per entry."""
    out = np.empty(n)
    window_sorted = np.empty(window)
    m = 0  # entries in window_sorted
    lo = hi = 0  # the window held: a[lo:hi]
    for j in range(n):
        end = first + j - lag + 1  # the window is a[start:end]
        if end <= 0:
            out[j] = np.nan
            continue
        start = max(0, end - window)
        if start >= hi or end < hi:  # no overlap with what is held: fill it anew
            m = 0
            for i in range(start, end):
                if not math.isnan(a[i]):
                    window_sorted[m] = a[i]
                    m += 1
            window_sorted[:m].sort()
        elif start == lo + 1 and end == hi + 1 and not (math.isnan(a[lo]) or math.isnan(a[hi])):
            _replace(window_sorted, m, a[lo], a[hi])  # the usual step: one out, one in
        else:
            for i in range(lo, start):
                if not math.isnan(a[i]):
                    k = _position(window_sorted, m, a[i])
                    for s in range(k, m - 1):
                        window_sorted[s] = window_sorted[s + 1]
                    m -= 1
            for i in range(hi, end):
                if not math.isnan(a[i]):
                    k = _position(window_sorted, m, a[i])
                    for s in range(m, k, -1):
                        window_sorted[s] = window_sorted[s - 1]
                    window_sorted[k] = a[i]
                    m += 1
        lo, hi = start, end
        if m == 0:
            out[j] = np.nan
        elif m % 2:
            out[j] = window_sorted[m // 2]
        else:
            out[j] = (window_sorted[m // 2 - 1] + window_sorted[m // 2]) / 2.0
    return out


@jit
def _position(window_sorted: FloatArray, m: int, x: float) -> int:
    """Where x goes in the first m sorted entries: before every entry not below it."""
    lo, hi = 0, m
    while lo < hi:
        mid = (lo + hi) >> 1
        if window_sorted[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@jit
def _replace(window_sorted: FloatArray, m: int, old: float, new: float) -> None:
    """Take `old` out of the sorted window and put `new` in, moving only what lies between."""
    k = _position(window_sorted, m, old)
    if new >= old:
        while k + 1 < m and window_sorted[k + 1] < new:
            window_sorted[k] = window_sorted[k + 1]
            k += 1
    else:
        while k > 0 and window_sorted[k - 1] > new:
            window_sorted[k] = window_sorted[k - 1]
            k -= 1
    window_sorted[k] = new


@jit
def max_before(a: FloatArray, first: int, n: int, window: int, lag: int) -> FloatArray:
    """Like `median_before`, the largest entry (NaN ignored)."""
    out = np.empty(n)
    for j in range(n):
        end = first + j - lag + 1
        best = np.nan
        for i in range(max(0, end - window), max(0, end)):
            if not math.isnan(a[i]) and (math.isnan(best) or a[i] > best):
                best = a[i]
        out[j] = best
    return out


def rolling_median(a: FloatArray, window: int) -> FloatArray:
    """Median of the `window` entries ending at each entry (fewer at the start; NaN ignored)."""
    return median_before(np.ascontiguousarray(a, dtype=np.float64), 0, len(a), window, 0)


def rolling_max(a: FloatArray, window: int) -> FloatArray:
    return max_before(np.ascontiguousarray(a, dtype=np.float64), 0, len(a), window, 0)


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
