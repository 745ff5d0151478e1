"""The day-of-week half of the historical baseline: the same hour on the same weekday a week
before. Many streams (traffic, business load) differ between weekdays and weekends, so a
Monday morning is unusual next to the weekend the daily profile remembers, yet normal next to
last Monday. The table keeps, for each hour of the last eight days, the lowest and highest
value seen; when a day starts, each hour's envelope is that hour's extremes a week before.
Hourly slots keep it small (about 1.7 kB).

Like the daily profile it is updated one day at a time, in time order, and a day reads only
earlier days, so the result does not depend on how the batch was cut.
"""

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from driftlock.detect.rolling import FloatArray
from driftlock.detect.state import DetectorState, ints

HOUR = 3600
HOURS = 24
ROWS = 8
"""Days in the table: today and the seven before it."""
_TINY = 1e-9

F32Array = npt.NDArray[np.float32]


class _Table(NamedTuple):
    day: npt.NDArray[np.int64]
    lo: F32Array
    hi: F32Array


def weekly_scores(
    state: DetectorState, ts: FloatArray, values: FloatArray, scale: FloatArray
) -> tuple[FloatArray, dict[str, object]]:
    """Raw scores (how far outside last week's envelope, in units of `scale`, the daily
    profile's width; NaN where last week holds nothing) and the fields to store."""
    n = len(values)
    table = _load(state)
    absolute = np.floor(ts / HOUR).astype(np.int64)
    day = absolute // HOURS
    hour = absolute - day * HOURS
    today = state.week_today
    if len(state.week_envelope) == 8 * HOURS:
        envelope = np.frombuffer(state.week_envelope, dtype=np.float32).reshape(2, HOURS)
    else:
        envelope = _envelope(table, today)
    lower, upper = np.empty(n), np.empty(n)
    changes = np.flatnonzero(day[1:] != day[:-1]) + 1
    for a, b in zip([0, *changes], [*changes, n], strict=True):
        if day[a] != today:
            today = int(day[a])
            envelope = _envelope(table, today)
        lower[a:b] = envelope[0, hour[a:b]]
        upper[a:b] = envelope[1, hour[a:b]]
        _record(table, today, hour[a:b], values[a:b])
    outside = np.maximum(values - upper, lower - values)
    unit = np.maximum(scale, _TINY * np.maximum(1.0, np.abs(values)))
    score = np.maximum(outside, 0.0) / unit  # NaN stays NaN: no say
    return score, {
        "week_today": today,
        "week_day": table.day.tobytes(),
        "week_lo": table.lo.tobytes(),
        "week_hi": table.hi.tobytes(),
        "week_envelope": envelope.tobytes(),
    }


def _load(state: DetectorState) -> _Table:
    if len(state.week_day) == 8 * ROWS:
        return _Table(
            ints(state.week_day).copy(),
            np.frombuffer(state.week_lo, dtype=np.float32).reshape(ROWS, HOURS).copy(),
            np.frombuffer(state.week_hi, dtype=np.float32).reshape(ROWS, HOURS).copy(),
        )
    return _Table(
        np.full(ROWS, -1, dtype=np.int64),
        np.full((ROWS, HOURS), np.inf, dtype=np.float32),
        np.full((ROWS, HOURS), -np.inf, dtype=np.float32),
    )


def _envelope(table: _Table, day: int) -> F32Array:
    """[lowest, highest] of each hour on the same weekday a week before (NaN: unknown)."""
    week_ago = day - 7
    envelope = np.full((2, HOURS), np.nan, dtype=np.float32)
    if table.day[week_ago % ROWS] == week_ago:
        envelope[0] = table.lo[week_ago % ROWS]
        envelope[1] = table.hi[week_ago % ROWS]
        envelope[:, envelope[0] > envelope[1]] = np.nan
    return envelope


def _record(table: _Table, day: int, hours: npt.NDArray[np.int64], values: FloatArray) -> None:
    row = day % ROWS
    if table.day[row] != day:
        table.day[row] = day
        table.lo[row] = np.inf
        table.hi[row] = -np.inf
    np.minimum.at(table.lo[row], hours, values.astype(np.float32))
    np.maximum.at(table.hi[row], hours, values.astype(np.float32))
