"""The day-of-week half of the historical baseline: the same hour on the same weekday a week
before. Many streams (traffic, business load) differ between weekdays and weekends, so a
Monday morning is unusual next to the weekend the daily profile remembers, yet normal next to
last Monday. The table keeps, for each hour of the last eight days, the lowest and highest
value seen; when a day starts, each hour's envelope is that hour's extremes a week before.
Hourly slots keep it small (about 1.7 kB).

Like the daily profile it is updated one day at a time, in time order, and a day reads only
earlier days, so the result does not depend on how the batch was cut.
"""

import numpy as np
import numpy.typing as npt

from driftlock.detect.daytable import F32Array, load_table, record, stored_rows
from driftlock.detect.jit import jit
from driftlock.detect.rolling import FloatArray
from driftlock.detect.state import DetectorState

HOUR = 3600
HOURS = 24
ROWS = 8
"""Days in the table: today and the seven before it."""
_TINY = 1e-9


def weekly_scores(
    state: DetectorState, ts: FloatArray, values: FloatArray, scale: FloatArray
) -> tuple[FloatArray, dict[str, object]]:
    """Raw scores (how far outside last week's envelope, in units of `scale`, the daily
    profile's width; NaN where last week holds nothing) and the fields to store."""
    score, day, lo, hi, envelope, today = week_kernel(
        ts,
        values,
        scale,
        state.week_day,
        state.week_lo,
        state.week_hi,
        state.week_envelope,
        state.week_today,
    )
    return score, {
        "week_today": today,
        "week_day": day.tobytes(),
        "week_lo": lo.tobytes(),
        "week_hi": hi.tobytes(),
        "week_envelope": envelope.tobytes(),
    }


@jit
def week_kernel(
    ts: FloatArray,
    values: FloatArray,
    scale: FloatArray,
    stored_day: bytes,
    stored_lo: bytes,
    stored_hi: bytes,
    stored_envelope: bytes,
    today: int,
) -> tuple[FloatArray, npt.NDArray[np.int64], F32Array, F32Array, F32Array, int]:
    """The stored table and envelope decoded, then `_scores`, in one compiled call; returns
    the scores and the table and envelope to store."""
    day, lo, hi = load_table(stored_day, stored_lo, stored_hi, ROWS, HOURS)
    if len(stored_envelope) == 8 * HOURS:
        envelope = np.frombuffer(stored_envelope, dtype=np.float32).copy().reshape(2, HOURS)
    else:
        envelope = _envelope(day, lo, hi, today)
    score, envelope, today = _scores(ts, values, scale, day, lo, hi, envelope, today)
    day, lo, hi = stored_rows(day, lo, hi)
    return score, day, lo, hi, envelope, today


@jit
def _scores(
    ts: FloatArray,
    values: FloatArray,
    scale: FloatArray,
    table_day: npt.NDArray[np.int64],
    table_lo: F32Array,
    table_hi: F32Array,
    envelope: F32Array,
    today: int,
) -> tuple[FloatArray, F32Array, int]:
    """Point by point in time order: a new day gets last week's envelope first, then every
    point is scored against its hour's envelope and recorded in the table."""
    n = len(values)
    score = np.empty(n)
    for j in range(n):
        absolute = int(np.floor(ts[j] / HOUR))
        day = absolute // HOURS
        hour = absolute - day * HOURS
        if day != today:
            today = day
            envelope = _envelope(table_day, table_lo, table_hi, today)
        x = values[j]
        outside = np.maximum(x - np.float64(envelope[1, hour]), envelope[0, hour] - x)
        unit = np.maximum(scale[j], _TINY * max(1.0, abs(x)))
        score[j] = np.maximum(outside, 0.0) / unit  # NaN stays NaN: no say
        record(table_day, table_lo, table_hi, today, hour, x)
    return score, envelope, today


@jit
def _envelope(
    table_day: npt.NDArray[np.int64], table_lo: F32Array, table_hi: F32Array, day: int
) -> F32Array:
    """[lowest, highest] of each hour on the same weekday a week before (NaN: unknown)."""
    week_ago = day - 7
    envelope = np.full((2, HOURS), np.nan, dtype=np.float32)
    if table_day[week_ago % ROWS] == week_ago:
        for h in range(HOURS):
            low, high = table_lo[week_ago % ROWS, h], table_hi[week_ago % ROWS, h]
            if low <= high:
                envelope[0, h], envelope[1, h] = low, high
    return envelope
