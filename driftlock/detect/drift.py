"""`level_drift`: how far the stream's level moved over the last few hours, against how far it
usually moves over as long.

The level at a point is the median of its last SPAN points (itself included), so one spike
does not move it; the drift is that level minus the level LAG points before. Every SPAN
points (at absolute stream positions) the drift is recorded in a ring of the last RING, about
a week on a five-minute stream; a point's raw score is how far its drift lies from the ring's
median, in robust standard deviations of the ring (1.4826 × its median absolute deviation).

It sees what the 256-point median follows too closely for `robust_level` and `change_point`:
a slow decline or a sustained shift over hours, which moves the level further than it ever
moves in a few hours, while the daily rhythm and the usual wandering are part of the ring.
Deterministic and batch-invariant (order statistics of the history and of the ring); no say
(NaN) until MIN_RING drifts are recorded.
"""

import math

import numpy as np
import numpy.typing as npt

from driftlock.detect.jit import jit
from driftlock.detect.rolling import FloatArray, median_before, place, sorted_mad, sorted_median
from driftlock.detect.state import DetectorState

SPAN = 12
"""Points in a level (an hour on a five-minute stream), and between recorded drifts."""
LAG = 48
"""Points between the two levels a drift compares (four hours on a five-minute stream)."""
RING = 192
"""Drifts recorded: 192 × SPAN points, eight days on a five-minute stream."""
MIN_RING = 8
HISTORY = LAG + SPAN
"""Values a point's drift reads: itself and the HISTORY - 1 before it."""
MAD_TO_SIGMA = 1.4826
_TINY = 1e-9


def drift_scores(
    state: DetectorState, series: FloatArray, n: int
) -> tuple[FloatArray, dict[str, object]]:
    """Raw scores for the last n entries of `series` (history + batch; the history holds at
    least HISTORY - 1 values unless it is the whole stream) and the ring to store."""
    old_ring = np.frombuffer(state.drift_ring, dtype=np.float32).astype(np.float64)
    raw, ring, order = drift_kernel(series, n, state.count, old_ring, state.drift_order)
    return raw, {"drift_ring": ring.astype(np.float32).tobytes(), "drift_order": order.tobytes()}


@jit
def _spread(ring: FloatArray, held: FloatArray) -> tuple[float, float]:
    """The ring's median and robust standard deviation; `held` is the ring in order."""
    m = len(ring)
    if not (math.isfinite(held[0]) and math.isfinite(held[m - 1])):
        center = float(np.median(ring))
        return center, MAD_TO_SIGMA * np.median(np.abs(ring - center))
    center = sorted_median(held, m)
    return center, MAD_TO_SIGMA * sorted_mad(held, m, center)


@jit
def drift_kernel(
    series: FloatArray, n: int, count: int, old_ring: FloatArray, stored_order: bytes
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.uint8]]:
    """Raw scores for the last n entries of `series` (see `drift_scores`), the ring and its
    order to store (`stored_order`: the stored ring's, see `DetectorState.drift_order`)."""
    h = len(series) - n
    # The ring is the window [lo, hi) of a buffer with room for every drift the batch
    # records (appending to an array made one every SPAN points).
    kept = old_ring[-RING:]
    buffer = np.empty(len(kept) + n // SPAN + 1)
    buffer[: len(kept)] = kept
    lo, hi = 0, len(kept)
    ring = buffer[lo:hi]
    # The ring in order (held) and where each of its drifts is in the ring (order), kept so
    # as each drift is recorded.
    held, order = np.empty(RING), np.empty(RING, dtype=np.int64)
    _in_order(ring, stored_order, held, order)
    center, spread = _spread(ring, held) if len(ring) >= MIN_RING else (0.0, 0.0)
    raw = np.empty(n)
    raw.fill(np.nan)
    # The level of every point of the batch and of the LAG points before it (NaN before the
    # stream's first point), in one slide of the two-heap median.
    levels = median_before(series, h - LAG, n + LAG, SPAN, 0)
    for j in range(n):
        if count + j < LAG:
            continue
        level = levels[LAG + j]
        drift = level - levels[j]
        if not math.isfinite(drift):
            continue
        if len(ring) >= MIN_RING:
            raw[j] = abs(drift - center) / max(spread, _TINY * max(1.0, abs(level)))
        if (count + j + 1) % SPAN == 0:
            # Recorded as stored (float32): a batch reads the ring a restart would.
            recorded = np.float64(np.float32(drift))
            _record(held, order, len(ring), ring[0] if len(ring) == RING else np.nan, recorded)
            buffer[hi] = recorded
            hi += 1
            lo = max(lo, hi - RING)
            ring = buffer[lo:hi]
            if len(ring) >= MIN_RING:
                center, spread = _spread(ring, held)
    return raw, ring, order[: len(ring)].astype(np.uint8)


@jit
def _in_order(
    ring: FloatArray, stored: bytes, held: FloatArray, order: npt.NDArray[np.int64]
) -> None:
    """held[:m], order[:m] for the ring's m drifts: the stored order when it is the ring's
    (a permutation that sorts it, equal drifts oldest first, as `_record` keeps it), which
    is checked in one pass; otherwise sorted (a state from before it, or a ring with NaN)."""
    m = len(ring)
    if len(stored) == m:
        seen = np.zeros(m, dtype=np.bool_)
        known = np.frombuffer(stored, dtype=np.uint8)
        valid = True
        for k in range(m):
            i = int(known[k])
            if i >= m or seen[i] or not math.isfinite(ring[i]):
                valid = False
                break
            seen[i] = True
            order[k], held[k] = i, ring[i]
            if k and (held[k] < held[k - 1] or (held[k] == held[k - 1] and i < order[k - 1])):
                valid = False
                break
        if valid:
            return
    order[:m] = np.argsort(ring, kind="mergesort")  # stable: equal drifts oldest first
    held[:m] = ring[order[:m]]


@jit
def _record(held: FloatArray, order: npt.NDArray[np.int64], m: int, out: float, x: float) -> None:
    """`swap_in` keeping the order too: the oldest drift, `out` (NaN: the ring is not full
    yet), leaves, and every ring position moves down by one; x comes in as the newest, after
    the drifts equal to it."""
    if not math.isnan(out):
        i = place(held, m, out)  # the first of the drifts equal to it: the oldest
        for t in range(i, m - 1):
            held[t] = held[t + 1]
            order[t] = order[t + 1]
        m -= 1
        for t in range(m):
            order[t] -= 1
    k = m
    while k > 0 and held[k - 1] > x:
        held[k] = held[k - 1]
        order[k] = order[k - 1]
        k -= 1
    held[k] = x
    order[k] = m
