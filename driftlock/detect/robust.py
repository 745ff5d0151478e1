"""Detectors on the value window, all robust statistics (medians), so batch-invariant:

- `robust_level`: how far a point lies from the rolling median of the points before it, in
  robust standard deviations (1.4826 × the rolling median absolute deviation);
- `change_point`: a two-sided CUSUM of the robust z-scores (each clipped to ±CUSUM_CLIP,
  less CUSUM_DRIFT): it accumulates a persistent deviation on one side, so it sees level
  shifts and drifts that no single point makes unusual. It runs in integer fixed point, so
  its sums are exact and do not depend on where batches start;
- `volatility`: how much the median absolute step of the last SHORT points differs from the
  window before them, as |log ratio| (a variance change, a burst of spikes).
"""

import math

import numpy as np
import numpy.typing as npt

from driftlock.detect.calibrate import EPOCH
from driftlock.detect.jit import jit
from driftlock.detect.rolling import FloatArray, median_before, pivoted_median_before

MAD_TO_SIGMA = 1.4826
LONG_RUN = 16
LONG_RUN_FLOOR = 0.25
CUSUM_DRIFT = 1.0
CUSUM_CLIP = 6.0
CUSUM_UNIT = 1024
_DRIFT = int(CUSUM_DRIFT * CUSUM_UNIT)
"""CUSUM steps are counted in 1/CUSUM_UNIT of a robust sigma, in integers."""
SHORT = 16
"""Points in the volatility detector's short window."""
_TINY = 1e-9
VOLATILITY_EPS = 0.01
"""Added to both medians of the volatility ratio, in robust sigmas: steps far below the
stream's noise do not make a volatility change."""


LEVEL, SHIFT, VOLATILITY, MEDIAN, SCALE, STEP, BUILT = range(7)
"""Rows of `robust_rows`' scores: `robust_level`; `change_point`, the larger CUSUM in robust
sigmas; `volatility`; the rolling median of the points before each point (NaN before the
first); the robust standard deviation of the points before each point; |x_t - x_{t-1}|; and
the CUSUM on the point's side before it, in robust sigmas: how far a shift had already built
up (a spike has none; the points after a level shift have)."""


@jit
def robust_rows(
    series: FloatArray,
    n: int,
    window: int,
    counted: npt.NDArray[np.bool_],
    stored_diffs: bytes,
    stored_devs: bytes,
    stored_scales: bytes,
    count: int,
    cusum_up: int,
    cusum_down: int,
    pivots: tuple[float, float, float],
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, int, int, tuple[float, float, float]]:
    """Raw scores of the three detectors for the batch, the last n entries of `series` (the
    stored values, then the batch), with the other per-point rows (see LEVEL ... BUILT) in
    one array, and the diffs, devs, scale ring and CUSUMs to store (the stored ones are read
    here, from the state's bytes); the CUSUM only counts the `counted` points (after the
    warm-up, and not explained by the seasonal profile). `pivots` are the low middles of the
    first point's windows of the three long medians (values, devs, steps; see
    `pivoted_median_before`), and the next point's are returned, to store."""
    old_diffs = np.frombuffer(stored_diffs, dtype=np.float64)
    old_devs = np.frombuffer(stored_devs, dtype=np.float64)
    ring = np.frombuffer(stored_scales, dtype=np.float64)
    h = len(series) - n
    diffs = np.empty(len(old_diffs) + n)
    diffs[: len(old_diffs)] = old_diffs
    devs = np.empty(len(old_devs) + n)
    devs[: len(old_devs)] = old_devs
    for j in range(n):
        p = h + j
        diffs[len(old_diffs) + j] = abs(series[p] - series[p - 1]) if p > 0 else np.nan
    median, level_pivot = pivoted_median_before(series, h, n, window, 1, pivots[0])
    for j in range(n):
        devs[len(old_devs) + j] = abs(series[h + j] - median[j])
    mad, scale_pivot = pivoted_median_before(devs, len(old_devs), n, window, 1, pivots[1])
    short = median_before(diffs, len(old_diffs), n, SHORT, 0)
    long, step_pivot = pivoted_median_before(diffs, len(old_diffs), n, window, SHORT, pivots[2])

    rows = np.empty((7, n))
    level, shift, volatility = rows[LEVEL], rows[SHIFT], rows[VOLATILITY]
    scale, built = rows[SCALE], rows[BUILT]
    rows[MEDIAN] = median
    rows[STEP] = diffs[len(old_diffs) :]
    # The long-run floor: LONG_RUN_FLOOR × the median of the scales recorded at the last
    # LONG_RUN epoch boundaries (absolute positions), so that after a flat stretch the first
    # ordinary wiggle is not a thousand-sigma event.
    floor = LONG_RUN_FLOOR * MAD_TO_SIGMA * np.median(ring) if len(ring) else 0.0
    for j in range(n):
        if (count + j) % EPOCH == 0 and math.isfinite(mad[j]):
            ring = np.append(ring, mad[j])[-LONG_RUN:]
            floor = LONG_RUN_FLOOR * MAD_TO_SIGMA * np.median(ring)
        x, mid = series[h + j], median[j]
        # np.maximum, not max: NaN (nothing before the point to measure from) stays NaN.
        s = np.maximum(MAD_TO_SIGMA * mad[j], np.maximum(floor, _TINY * max(1.0, abs(mid))))
        scale[j] = s
        lv = abs(x - mid) / s
        known = math.isfinite(lv)
        level[j] = lv if known else 0.0
        signed = (x - mid) / s if known and counted[j] else 0.0
        step = int(np.rint(min(max(signed, -CUSUM_CLIP), CUSUM_CLIP) * CUSUM_UNIT))
        built[j] = (cusum_up if signed >= 0 else cusum_down) / CUSUM_UNIT
        cusum_up = max(0, cusum_up + step - _DRIFT)
        cusum_down = max(0, cusum_down - step - _DRIFT)
        shift[j] = max(cusum_up, cusum_down) / CUSUM_UNIT
        eps = VOLATILITY_EPS * s
        v = abs(np.log((short[j] + eps) / (long[j] + eps)))
        volatility[j] = v if math.isfinite(v) else 0.0
    return (
        rows,
        diffs[-(window + SHORT) :].copy(),
        devs[-window:].copy(),
        ring,
        cusum_up,
        cusum_down,
        (level_pivot, scale_pivot, step_pivot),
    )
