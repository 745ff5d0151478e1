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
IntArray = npt.NDArray[np.int64]


@jit
def _sift(heap: IntArray, size: int, vals: FloatArray, pos: IntArray, k: int, side: int) -> None:
    """Move heap[k] to its place in heap[:size], a heap of node ids: the largest value on
    top for the low side (0), the smallest for the high side (1)."""
    if side == 0:
        _sift_low(heap, size, vals, pos, k)
    else:
        _sift_high(heap, size, vals, pos, k)


@jit
def _sift_low(heap: IntArray, size: int, vals: FloatArray, pos: IntArray, k: int) -> None:
    """`_sift` in the low half's max-heap (the comparisons written out: no sign to apply)."""
    node = heap[k]
    x = vals[node]
    while k > 0:
        parent = (k - 1) >> 1
        up = heap[parent]
        if vals[up] >= x:
            break
        heap[k] = up
        pos[up] = k
        k = parent
    while True:
        child = 2 * k + 1
        if child >= size:
            break
        down = heap[child]
        if child + 1 < size and vals[heap[child + 1]] > vals[down]:
            child += 1
            down = heap[child]
        if vals[down] <= x:
            break
        heap[k] = down
        pos[down] = k
        k = child
    heap[k] = node
    pos[node] = k


@jit
def _sift_high(heap: IntArray, size: int, vals: FloatArray, pos: IntArray, k: int) -> None:
    """`_sift` in the high half's min-heap."""
    node = heap[k]
    x = vals[node]
    while k > 0:
        parent = (k - 1) >> 1
        up = heap[parent]
        if vals[up] <= x:
            break
        heap[k] = up
        pos[up] = k
        k = parent
    while True:
        child = 2 * k + 1
        if child >= size:
            break
        down = heap[child]
        if child + 1 < size and vals[heap[child + 1]] < vals[down]:
            child += 1
            down = heap[child]
        if vals[down] >= x:
            break
        heap[k] = down
        pos[down] = k
        k = child
    heap[k] = node
    pos[node] = k


SORTED_WINDOW = 64
"""Windows up to this long slide as one array in order, longer ones as two heaps (faster
there: a step in a long ordered window shifts too many entries)."""


@jit
def place(held: FloatArray, m: int, x: float) -> int:
    """Where x goes in held[:m] (ascending): the first entry not below it."""
    lo, hi = 0, m
    while lo < hi:
        mid = (lo + hi) >> 1
        if held[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@jit
def swap_in(held: FloatArray, m: int, out: float, x: float) -> int:
    """Take one entry equal to `out` out of held[:m] (ascending) and put x in, keeping the
    order; NaN for either means none. Returns the new count. (Short windows: positions are
    counted, not searched for, see `_below`.)"""
    if math.isnan(out):
        if math.isnan(x):
            return m
        k = _below(held, m, x)
        for t in range(m, k, -1):
            held[t] = held[t - 1]
        held[k] = x
        return m + 1
    i = _below(held, m, out)
    if math.isnan(x):
        for t in range(i, m - 1):
            held[t] = held[t + 1]
        return m - 1
    if x >= out:
        k = max(_below(held, m, x), i + 1)
        for t in range(i, k - 1):
            held[t] = held[t + 1]
        held[k - 1] = x
    else:
        k = _below(held, m, x)
        for t in range(i, k, -1):
            held[t] = held[t - 1]
        held[k] = x
    return m


@jit
def _below(held: FloatArray, m: int, x: float) -> int:
    """How many of held[:m] are below x: for held in order (no NaN), where `place` puts x.
    In the short windows `swap_in` slides (up to SORTED_WINDOW), counting them all (no
    branch, compiled to vector compares) beats a binary search's unpredictable branches:
    100 steps of a 16-point window 9.7 -> 7.0 us, of a 64-point one 17 -> 11 us."""
    k = 0
    for t in range(m):
        k += held[t] < x
    return k


@jit
def sorted_median(held: FloatArray, m: int) -> float:
    """The median of held[:m] (ascending, m > 0), as np.median computes it."""
    half = m >> 1
    return float(held[half] if m & 1 else (held[half - 1] + held[half]) / 2)


@jit
def sorted_mad(held: FloatArray, m: int, center: float) -> float:
    """np.median(np.abs(held[:m] - center)) for held[:m] ascending and finite: the deviations
    grow outward from the center on both sides, so they are merged in order, half of them."""
    lo = place(held, m, center) - 1
    hi = lo + 1
    prev = last = 0.0
    for _ in range((m >> 1) + 1):
        if hi < m and (lo < 0 or abs(held[hi] - center) <= abs(held[lo] - center)):
            d = abs(held[hi] - center)
            hi += 1
        else:
            d = abs(held[lo] - center)
            lo -= 1
        prev, last = last, d
    return last if m & 1 else (prev + last) / 2


@jit
def _sorted_median_before(a: FloatArray, first: int, n: int, window: int, lag: int) -> FloatArray:
    """`median_before` (n > 1) with the window's entries held in order."""
    out = np.empty(n)
    held = np.empty(window)
    m = lo = hi = 0
    for j in range(n):
        end = first + j - lag + 1
        if end <= 0:
            out[j] = np.nan
            continue
        start = max(0, end - window)
        if start >= hi:  # nothing held is still in the window: fill it anew
            m = 0
            for e in range(start, end):
                if not math.isnan(a[e]):
                    held[m] = a[e]
                    m += 1
            held[:m] = np.sort(held[:m])
        else:
            for e in range(hi, end):
                m = swap_in(held, m, a[e - window] if e - window >= lo else np.nan, a[e])
        lo, hi = start, end
        out[j] = sorted_median(held, m) if m else np.nan
    return out


@jit
def median_before(a: FloatArray, first: int, n: int, window: int, lag: int) -> FloatArray:
    """For the n entries from index `first` on, the median of the `window` entries of `a`
    ending `lag` entries before each (fewer at the start; NaN where there are none).

    One point: a selection over its window. More: a short window is held in order (a step
    shifts a few entries); a long one as two heaps that slide along (the low half under the
    high half, as bottleneck does), so a step costs a few sifts, not a sort."""
    out = np.empty(n)
    if n == 1:
        out[0] = _window_median(a, first - lag + 1, window)
        return out
    if window <= SORTED_WINDOW:
        return _sorted_median_before(a, first, n, window, lag)
    return _heap_median_before(a, first, n, window, lag, np.nan, False)[0]


@jit
def pivoted_median_before(
    a: FloatArray, first: int, n: int, window: int, lag: int, pivot: float
) -> tuple[FloatArray, float]:
    """`median_before` (lag >= 1) given `pivot`, the low middle value (the ((m + 1) // 2)-th
    smallest of m) of the first point's window, as the previous call returned it; also
    returns the low middle of the window of the point after the last, for the next call
    (NaN: none held). A long window's heaps are then built by splitting it at the pivot in
    one pass instead of a selection, and one point's median is counted out around it; a pivot
    that is not the low middle (unknown, or the window changed) is only a slower start.
    The pivot depends on the window alone, not on how the stream was batched."""
    end = first - lag + 1
    if n == 1 and window > SORTED_WINDOW and end > 0:
        median, following, known = _counted_median(a, end, window, pivot)
        if known:
            out = np.empty(1)
            out[0] = median
            return out, following
    return _heap_median_before(a, first, n, window, lag, pivot, True)


@jit
def _heap_median_before(
    a: FloatArray, first: int, n: int, window: int, lag: int, pivot: float, following: bool
) -> tuple[FloatArray, float]:
    """`median_before` on two heaps, the first fill split at `pivot` when it is the low
    middle; with `following` (lag >= 1), one step further, to the window of the point after
    the last, whose low middle it returns (NaN otherwise)."""
    steps = n + 1 if following else n
    out = np.empty(steps)
    # Node e % window holds entry e of the window; the low half is a max-heap (heaps[0]),
    # the high half a min-heap (heaps[1]); side[node]: 0 low, 1 high, -1 not held (NaN).
    vals = np.empty(window)
    pos = np.empty(window, np.int64)
    side = np.full(window, -1, np.int8)
    heaps = np.empty((2, window), np.int64)
    low, high = heaps[0], heaps[1]
    sizes = np.zeros(2, np.int64)
    lo = hi = 0
    for j in range(steps):
        end = first + j - lag + 1
        if end <= 0:
            out[j] = np.nan
            continue
        start = max(0, end - window)
        if start >= hi:  # nothing held is still in the window: fill it anew
            _fill(a, start, end, heaps, sizes, vals, pos, side, pivot)
            pivot = np.nan  # it was the first window's
            lo, hi = start, end
        for e in range(hi, end):
            node = e % window
            held = e - window >= lo and side[node] >= 0  # entry e - window, leaving
            if held and not math.isnan(a[e]):
                # The usual step: one value out, one in, same node; the halves keep their
                # sizes, so only their tops may have to change places.
                vals[node] = a[e]
                if side[node] == 0:
                    _sift_low(low, sizes[0], vals, pos, pos[node])
                else:
                    _sift_high(high, sizes[1], vals, pos, pos[node])
                top, bottom = low[0], high[0]
                if sizes[1] and vals[top] > vals[bottom]:
                    low[0], high[0] = bottom, top
                    side[bottom], side[top] = 0, 1
                    _sift_low(low, sizes[0], vals, pos, 0)
                    _sift_high(high, sizes[1], vals, pos, 0)
            else:
                if held:
                    _take_out(heaps, sizes, vals, pos, side, node)
                if not math.isnan(a[e]):
                    _put_in(heaps, sizes, vals, pos, side, node, a[e])
                _balance(heaps, sizes, vals, pos, side)
        lo, hi = start, end
        m = sizes[0] + sizes[1]
        if m == 0:
            out[j] = np.nan
        elif m % 2:
            out[j] = vals[heaps[0, 0]]
        else:
            out[j] = (vals[heaps[0, 0]] + vals[heaps[1, 0]]) / 2.0
    # (A slice either way: one return type.)
    return out[:n], vals[heaps[0, 0]] if following and sizes[0] else np.nan


@jit
def _fill(
    a: FloatArray,
    start: int,
    end: int,
    heaps: IntArray,
    sizes: IntArray,
    vals: FloatArray,
    pos: IntArray,
    side: npt.NDArray[np.int8],
    pivot: float,
) -> None:
    """Hold a[start:end] (NaN left out): the pivot (when it is the low middle, see
    `pivoted_median_before`) or else a selection splits it into its low and high halves,
    which are then made a max-heap and a min-heap (cheaper than a sort)."""
    window = len(vals)
    side[:] = -1
    nodes = heaps[0]  # the held nodes, split in place; the high half then moves to heaps[1]
    m = 0
    for e in range(start, end):
        if not math.isnan(a[e]):
            node = e % window
            vals[node] = a[e]
            nodes[m] = node
            m += 1
    low = (m + 1) // 2
    sizes[0], sizes[1] = low, m // 2
    if not _split(nodes, m, low, vals, pivot, heaps[1]):
        if 0 < low < m:
            _select(nodes, m, low - 1, vals)
        heaps[1, : m - low] = nodes[low:m]
    for s in (0, 1):
        size = sizes[s]
        for k in range(size // 2 - 1, -1, -1):
            _sift_down(heaps[s], size, vals, k, 1.0 if s == 0 else -1.0)
        for k in range(size):
            node = heaps[s, k]
            side[node] = s
            pos[node] = k


@jit
def _split(
    nodes: IntArray, m: int, low: int, vals: FloatArray, pivot: float, high: IntArray
) -> bool:
    """If `pivot` is the low-th smallest value of nodes[:m], move the low nodes to
    nodes[:low], none above it, and the others to high[: m - low], none below it (one pass,
    where a selection takes several); False, nothing moved, otherwise."""
    below = equal = 0
    for i in range(m):
        x = vals[nodes[i]]
        below += x < pivot
        equal += x == pivot
    if not below < low <= below + equal:  # a NaN pivot: neither
        return False
    ties = low - below  # values equal to the pivot that go to the low half
    k = h = 0
    for i in range(m):
        node = nodes[i]
        x = vals[node]
        if x < pivot or (x == pivot and ties > 0):
            ties -= x == pivot
            nodes[k] = node  # k <= i: an entry not read yet is never overwritten
            k += 1
        else:
            high[h] = node
            h += 1
    return True


@jit
def _counted_median(
    a: FloatArray, end: int, window: int, pivot: float
) -> tuple[float, float, bool]:
    """The median of the window ending before `end` and the low middle of the one after it
    (ending one entry later), counted around `pivot`, the first window's low middle (two
    passes, no selection); False when the pivot is not that."""
    start = max(0, end - window)
    m, below, equal, _, above_min = _around(a, start, end, pivot)
    low = (m + 1) // 2
    if not below < low <= below + equal:
        return np.nan, np.nan, False
    second = pivot if m & 1 or below + equal > low else above_min
    median = pivot if m & 1 else (pivot + second) / 2
    # One entry in, maybe one out: the low middle moves by at most one value.
    m, below, equal, below_max, above_min = _around(a, max(0, end + 1 - window), end + 1, pivot)
    low = (m + 1) // 2
    if m == 0:
        return median, np.nan, True
    if below < low <= below + equal:
        return median, pivot, True
    if below == low:
        return median, below_max, True
    if below + equal + 1 == low:
        return median, above_min, True
    return np.nan, np.nan, False


@jit
def _around(
    a: FloatArray, start: int, end: int, pivot: float
) -> tuple[int, int, int, float, float]:
    """Of a[start:end] (NaN left out): how many, how many below and equal to `pivot`, the
    largest below it and the smallest above it."""
    m = below = equal = 0
    below_max, above_min = -np.inf, np.inf
    for e in range(start, end):
        x = a[e]
        if math.isnan(x):
            continue
        m += 1
        if x < pivot:
            below += 1
            below_max = max(below_max, x)
        elif x > pivot:
            above_min = min(above_min, x)
        elif x == pivot:  # not for a NaN pivot
            equal += 1
    return m, below, equal, below_max, above_min


@jit
def _select(nodes: IntArray, m: int, k: int, vals: FloatArray) -> None:
    """Reorder nodes[:m] so that nodes[k] holds the k-th smallest value, none above it before
    it and none below it after it (Hoare's selection, median-of-three pivots)."""
    lo, hi = 0, m - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        # Median of three to nodes[mid], then use it as the pivot.
        if vals[nodes[mid]] < vals[nodes[lo]]:
            nodes[mid], nodes[lo] = nodes[lo], nodes[mid]
        if vals[nodes[hi]] < vals[nodes[lo]]:
            nodes[hi], nodes[lo] = nodes[lo], nodes[hi]
        if vals[nodes[hi]] < vals[nodes[mid]]:
            nodes[hi], nodes[mid] = nodes[mid], nodes[hi]
        pivot = vals[nodes[mid]]
        i, j = lo, hi
        while i <= j:
            while vals[nodes[i]] < pivot:
                i += 1
            while vals[nodes[j]] > pivot:
                j -= 1
            if i <= j:
                nodes[i], nodes[j] = nodes[j], nodes[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return


@jit
def _sift_down(heap: IntArray, size: int, vals: FloatArray, k: int, sign: float) -> None:
    """heap[k] down to its place below it (positions are set by the caller)."""
    node = heap[k]
    x = sign * vals[node]
    while True:
        child = 2 * k + 1
        if child >= size:
            break
        if child + 1 < size and sign * vals[heap[child + 1]] > sign * vals[heap[child]]:
            child += 1
        if sign * vals[heap[child]] <= x:
            break
        heap[k] = heap[child]
        k = child
    heap[k] = node


@jit
def _window_median(a: FloatArray, end: int, window: int) -> float:
    if end <= 0:
        return np.nan
    start = max(0, end - window)
    held = np.empty(end - start)
    m = 0
    for e in range(start, end):
        if not math.isnan(a[e]):
            held[m] = a[e]
            m += 1
    if m == 0:
        return np.nan
    # np.median's result, selected in place: the middle entry, or the mean of the two.
    half = m >> 1
    if m & 1:
        return _select_value(held, m, half)
    low = _select_value(held, m, half - 1)
    return float((low + held[half:m].min()) / 2)


@jit
def _select_value(held: FloatArray, m: int, k: int) -> float:
    """The k-th smallest of held[:m] (no NaN), reordering it so that none after it is smaller
    (Hoare's selection, median-of-three pivots)."""
    lo, hi = 0, m - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if held[mid] < held[lo]:
            held[mid], held[lo] = held[lo], held[mid]
        if held[hi] < held[lo]:
            held[hi], held[lo] = held[lo], held[hi]
        if held[hi] < held[mid]:
            held[hi], held[mid] = held[mid], held[hi]
        pivot = held[mid]
        i, j = lo, hi
        while i <= j:
            while held[i] < pivot:
                i += 1
            while held[j] > pivot:
                j -= 1
            if i <= j:
                held[i], held[j] = held[j], held[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return float(held[k])


@jit
def _take_out(
    heaps: IntArray,
    sizes: IntArray,
    vals: FloatArray,
    pos: IntArray,
    side: npt.NDArray[np.int8],
    node: int,
) -> None:
    """The last node of its heap takes its place."""
    s = side[node]
    sizes[s] -= 1
    k = pos[node]
    if k < sizes[s]:
        heaps[s, k] = heaps[s, sizes[s]]
        pos[heaps[s, k]] = k
        _sift(heaps[s], sizes[s], vals, pos, k, s)
    side[node] = -1


@jit
def _put_in(
    heaps: IntArray,
    sizes: IntArray,
    vals: FloatArray,
    pos: IntArray,
    side: npt.NDArray[np.int8],
    node: int,
    x: float,
) -> None:
    vals[node] = x
    s = 0 if sizes[0] == 0 or x <= vals[heaps[0, 0]] else 1
    heaps[s, sizes[s]] = node
    side[node] = s
    pos[node] = sizes[s]
    sizes[s] += 1
    _sift(heaps[s], sizes[s], vals, pos, sizes[s] - 1, s)


@jit
def _balance(
    heaps: IntArray, sizes: IntArray, vals: FloatArray, pos: IntArray, side: npt.NDArray[np.int8]
) -> None:
    """The low half holds as many entries as the high one, or one more, none above them."""
    for s in (0, 1):
        if sizes[s] > sizes[1 - s] + (1 - s):
            node = heaps[s, 0]
            _take_out(heaps, sizes, vals, pos, side, node)
            t = 1 - s
            heaps[t, sizes[t]] = node
            side[node] = t
            pos[node] = sizes[t]
            sizes[t] += 1
            _sift(heaps[t], sizes[t], vals, pos, sizes[t] - 1, t)
    if sizes[1] and vals[heaps[0, 0]] > vals[heaps[1, 0]]:
        low, high = heaps[0, 0], heaps[1, 0]
        heaps[0, 0], heaps[1, 0] = high, low
        side[high], side[low] = 0, 1
        _sift(heaps[0], sizes[0], vals, pos, 0, 0)
        _sift(heaps[1], sizes[1], vals, pos, 0, 1)


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


def extend(history: FloatArray, new: FloatArray) -> FloatArray:
    return np.concatenate((history, new)) if len(history) else new
