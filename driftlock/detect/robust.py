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

from typing import NamedTuple

import bottleneck as bn
import numpy as np
import numpy.typing as npt

from driftlock.detect.calibrate import EPOCH
from driftlock.detect.rolling import (
    FloatArray,
    before_each_point,
    extend,
    rolling_median,
)
from driftlock.detect.state import DetectorState, floats, tail

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


class RobustScores(NamedTuple):
    level: FloatArray
    shift: FloatArray
    """The larger CUSUM, in robust sigmas."""
    volatility: FloatArray
    median: FloatArray
    """Rolling median of the points before each point (NaN before the first)."""
    scale: FloatArray
    """Robust standard deviation of the points before each point."""
    step: FloatArray
    """|x_t - x_{t-1}|."""
    built: FloatArray
    """The CUSUM on the point's side before it, in robust sigmas: how far a shift had already
    built up (a spike has none; the points after a level shift have)."""


def robust_scores(
    state: DetectorState,
    series: FloatArray,
    n: int,
    window: int,
    counted: npt.NDArray[np.bool_],
) -> tuple[RobustScores, dict[str, object]]:
    """Raw scores of the three detectors for the batch, the last n entries of `series` (the
    stored values, then the batch), and the history fields to store; the CUSUM only counts the
    `counted` points (after the warm-up, and not explained by the seasonal profile)."""
    values = series[-n:]
    if len(series) > n:
        steps = np.abs(series[-n:] - series[-n - 1 : -1])
    else:  # the stream's first point has no step
        steps = np.abs(values - np.concatenate(([np.nan], values[:-1])))
    diff_series = extend(floats(state.diffs), steps)

    medians = rolling_median(series, window)
    median = before_each_point(medians, n)
    dev = np.abs(values - median)
    dev_series = extend(floats(state.devs), dev)
    mad = before_each_point(rolling_median(dev_series, window), n)
    floor, scales = _long_run_floor(state, mad)
    # NaN (nothing before the point to measure from) stays NaN: no score.
    scale = np.maximum(
        MAD_TO_SIGMA * mad, np.maximum(floor, _TINY * np.maximum(1.0, np.abs(median)))
    )
    level = dev / scale
    known = np.isfinite(level)

    signed = np.where(known & counted, (values - median) / scale, 0.0)
    up, down, cusum_fields = _cusum(state, signed)

    short = rolling_median(diff_series[-n - SHORT + 1 :], SHORT)[-n:]
    long = before_each_point(rolling_median(diff_series, window), n, SHORT)
    eps = VOLATILITY_EPS * scale
    volatility = np.abs(np.log((short + eps) / (long + eps)))

    keep = window + SHORT
    up_before = np.concatenate(([state.cusum_up], up[:-1]))
    down_before = np.concatenate(([state.cusum_down], down[:-1]))
    built = np.where(signed >= 0, up_before, down_before) / CUSUM_UNIT
    scores = RobustScores(
        np.where(known, level, 0.0),
        np.maximum(up, down) / CUSUM_UNIT,
        np.where(np.isfinite(volatility), volatility, 0.0),
        median,
        scale,
        steps,
        built,
    )
    return scores, {
        "values": tail(series, keep),
        "diffs": tail(diff_series, keep),
        "devs": tail(dev_series, window),
        "scales": scales,
        **cusum_fields,
    }


def _long_run_floor(state: DetectorState, mad: FloatArray) -> tuple[FloatArray | float, bytes]:
    """A floor under the scale: LONG_RUN_FLOOR × the median of the scales recorded at the last
    LONG_RUN epoch boundaries (absolute positions), so that after a flat stretch the first
    ordinary wiggle is not a thousand-sigma event."""
    n = len(mad)
    ring = floats(state.scales)
    value = LONG_RUN_FLOOR * MAD_TO_SIGMA * float(bn.median(ring)) if len(ring) else 0.0
    boundaries = range((-state.count) % EPOCH, n, EPOCH)
    if not boundaries:
        return value, state.scales
    floor = np.empty(n)
    a = 0
    for b in boundaries:
        floor[a:b] = value
        if np.isfinite(mad[b]):
            ring = np.append(ring, mad[b])[-LONG_RUN:]
            value = LONG_RUN_FLOOR * MAD_TO_SIGMA * float(bn.median(ring))
        a = b
    floor[a:] = value
    return floor, ring.tobytes()


def _cusum(
    state: DetectorState, signed: FloatArray
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], dict[str, int]]:
    """u_t = max(0, u_{t-1} + a_t) for both sides, solved in closed form over the batch:
    u_t = P_t - min(-u_0, min_{j<=t} P_j), P being the running sum of the steps. Integers, so
    the sums are exact whatever the batches."""
    steps = np.rint(np.minimum(np.maximum(signed, -CUSUM_CLIP), CUSUM_CLIP) * CUSUM_UNIT)
    sides = np.empty((2, len(signed)), dtype=np.int64)
    sides[0] = steps
    sides[1] = -steps
    sides -= _DRIFT
    np.cumsum(sides, axis=1, out=sides)
    lowest = np.minimum.accumulate(sides, axis=1)
    np.minimum(lowest, [[-state.cusum_up], [-state.cusum_down]], out=lowest)
    sides -= lowest
    up, down = sides
    return up, down, {"cusum_up": int(up[-1]), "cusum_down": int(down[-1])}
