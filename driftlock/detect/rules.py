"""Timestamp- and run-driven checks: `missing_data` and `flatline`.

Both fire on records only, so a stream that is always gappy or often flat does not alert
again and again: a gap must be GAP_FACTOR times the stream's usual interval and twice as long
as any gap seen since the warm-up; a run of identical values must be FLAT_MIN points long and
twice as long as any run that has ended before (so a stream that has never changed value,
a constant, never fires).
"""

import math

import numpy as np
import numpy.typing as npt

from driftlock.detect.jit import jit
from driftlock.detect.rolling import FloatArray, median_before

GAP_WINDOW = 64
GAP_FACTOR = 10.0
FLAT_MIN = 12

BoolArray = npt.NDArray[np.bool_]


@jit
def both_checks(
    values: FloatArray,
    last: float,
    run: int,
    record: int,
    ts: FloatArray,
    last_ts: float,
    stored_gaps: bytes,
    gap_record: float,
    count: int,
    warmup: int,
) -> tuple[BoolArray, int, int, BoolArray, FloatArray, FloatArray, FloatArray, float]:
    """Both checks in one compiled call (the stored gaps read here, from the state's bytes):
    the flatline and missing-data flags, the run and its record, the stream's usual seconds
    between points before each point, the gaps, the gaps to store and the gap record; `last`
    and `last_ts` are the value and time before the batch (NaN: none)."""
    flat, run, record = flatline(values, last, count, warmup, run, record)
    old_gaps = np.frombuffer(stored_gaps, dtype=np.float64)
    missing, interval, gap, gaps, gap_record = _gaps(
        ts, last_ts, old_gaps, count, warmup, gap_record
    )
    return flat, run, record, missing, interval, gap, gaps, gap_record


@jit
def flatline(
    values: FloatArray, last: float, count: int, warmup: int, run: int, record: int
) -> tuple[BoolArray, int, int]:
    """A run of identical values that is FLAT_MIN points long and twice the longest run that
    ended before it; `last` is the value before the batch (NaN: none)."""
    n = len(values)
    flat = np.empty(n, dtype=np.bool_)
    for j in range(n):
        before = values[j - 1] if j else last
        if values[j] == before:
            run += 1
        else:  # a change ends the run before it
            record = max(record, run)
            run = 1
        flat[j] = count + j >= warmup and record > 0 and run == max(FLAT_MIN, 2 * record)
    return flat, run, record


@jit
def _gaps(
    ts: FloatArray, last_ts: float, old_gaps: FloatArray, count: int, warmup: int, record: float
) -> tuple[BoolArray, FloatArray, FloatArray, FloatArray, float]:
    """A gap GAP_FACTOR times the usual interval (the median of the last GAP_WINDOW gaps) and
    twice any gap seen since the warm-up; `last_ts` is the time before the batch (NaN: none)."""
    n = len(ts)
    gap_series = np.empty(len(old_gaps) + n)
    gap_series[: len(old_gaps)] = old_gaps
    gap = gap_series[len(old_gaps) :]
    for j in range(n):
        gap[j] = ts[j] - (ts[j - 1] if j else last_ts)
    interval = median_before(gap_series, len(old_gaps), n, GAP_WINDOW, 1)
    missing = np.empty(n, dtype=np.bool_)
    for j in range(n):
        scored = count + j >= warmup
        missing[j] = scored and gap[j] >= GAP_FACTOR * interval[j] and gap[j] > 2.0 * record
        if scored and math.isfinite(gap[j]):
            record = max(record, gap[j])
    return missing, interval, gap.copy(), gap_series[-GAP_WINDOW:].copy(), record
