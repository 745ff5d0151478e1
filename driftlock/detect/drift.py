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

from driftlock.detect.jit import jit
from driftlock.detect.rolling import FloatArray, median_before, sorted_mad, sorted_median, swap_in
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
    raw, ring = drift_kernel(series, n, state.count, old_ring)
    return raw, {"drift_ring": ring.astype(np.float32).tobytes()}


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
    series: FloatArray, n: int, count: int, old_ring: FloatArray
) -> tuple[FloatArray, FloatArray]:
    h = len(series) - n
    ring = old_ring[-RING:].copy()
    held = np.empty(RING)  # the ring in order, kept so as each drift is recorded
    held[: len(ring)] = np.sort(ring)
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
            swap_in(held, len(ring), ring[0] if len(ring) == RING else np.nan, recorded)
            ring = np.append(ring, recorded)[-RING:]
            if len(ring) >= MIN_RING:
                center, spread = _spread(ring, held)
    return raw, ring
