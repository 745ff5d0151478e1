"""`seasonal_profile`: the historical baseline comparison. For every 5-minute slot of the day
the table keeps the lowest and highest value seen in it on each of the last few days. When a
day starts, each slot gets its envelope: the extremes of that slot and its neighbours
(reaching as far as the stream's usual interval between points) on the previous `days` days.
The raw score is how far a point lies outside its slot's envelope, in units of the day's
median envelope width.

The table is updated one day at a time, in time order, and a day's envelopes read only earlier
days, so the result does not depend on how the batch was cut.
"""

import math

import numpy as np
import numpy.typing as npt

from driftlock.detect.daytable import F32Array, load_table, record, stored_rows
from driftlock.detect.jit import jit
from driftlock.detect.rolling import FloatArray

SLOT_SECONDS = 300
SLOTS_PER_DAY = 86_400 // SLOT_SECONDS
MAX_REACH = 12
"""Neighbouring slots an envelope may take in on each side (one hour), for sparse streams."""
_TINY = 1e-9


@jit
def season(
    ts: FloatArray,
    values: FloatArray,
    interval: FloatArray,
    stored_day: bytes,
    stored_lo: bytes,
    stored_hi: bytes,
    stored_envelope: bytes,
    today: int,
    reach: int,
    width: float,
    days: int,
) -> tuple[
    FloatArray,
    FloatArray,
    FloatArray,
    FloatArray,
    npt.NDArray[np.int64],
    F32Array,
    F32Array,
    F32Array,
    int,
    int,
    float,
]:
    """The stored table and today's envelope decoded, then `_scores`, in one compiled call;
    returns the scores, envelopes (NaN where the profile holds nothing yet for the point's
    time of day) and the day's median envelope width (the unit of the score), then the table,
    envelope and day to store. `interval` is the stream's usual seconds between points,
    before each point."""
    day, lo, hi = load_table(stored_day, stored_lo, stored_hi, days + 1, SLOTS_PER_DAY)
    if len(stored_envelope) == 8 * SLOTS_PER_DAY:
        envelope = np.frombuffer(stored_envelope, dtype=np.float32).copy().reshape(2, SLOTS_PER_DAY)
    else:
        envelope, width = _day_envelope(day, lo, hi, today, reach, days)
    score, lower, upper, scale, envelope, today, reach, width = _scores(
        ts, values, interval, day, lo, hi, envelope, today, reach, width, days
    )
    day, lo, hi = stored_rows(day, lo, hi)
    if np.isnan(envelope).all():
        # Nothing known for today yet (a young stream's first day): nothing to store, and
        # the next call finds the same in a glance at the table (a third of a new stream's
        # state was this envelope).
        envelope = np.empty((2, 0), dtype=np.float32)
    return score, lower, upper, scale, day, lo, hi, envelope, today, reach, width


@jit
def _scores(
    ts: FloatArray,
    values: FloatArray,
    interval: FloatArray,
    table_day: npt.NDArray[np.int64],
    table_lo: F32Array,
    table_hi: F32Array,
    envelope: F32Array,
    today: int,
    reach: int,
    width: float,
    days: int,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, F32Array, int, int, float]:
    """Point by point in time order: a new day gets its envelopes first (from earlier days
    only), then every point is scored against its slot's envelope and recorded in the table."""
    n = len(values)
    score, lower, upper, scale = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    for j in range(n):
        absolute = int(np.floor(ts[j] / SLOT_SECONDS))
        day = absolute // SLOTS_PER_DAY
        slot = absolute - day * SLOTS_PER_DAY
        if day != today:
            # A new day: its reach follows the stream's usual interval as known at its first
            # point, whichever batch that point came in.
            today = day
            usual = interval[j] if math.isfinite(interval[j]) else SLOT_SECONDS
            reach = int(min(MAX_REACH, max(1, np.ceil(usual / SLOT_SECONDS))))
            envelope, width = _day_envelope(table_day, table_lo, table_hi, today, reach, days)
        x = values[j]
        lower[j], upper[j], scale[j] = envelope[0, slot], envelope[1, slot], width
        outside = np.maximum(x - upper[j], lower[j] - x)  # NaN stays NaN: no say
        score[j] = np.maximum(outside, 0.0) / np.maximum(width, _TINY * max(1.0, abs(x)))
        record(table_day, table_lo, table_hi, today, slot, x)
    return score, lower, upper, scale, envelope, today, reach, width


@jit
def _day_envelope(
    table_day: npt.NDArray[np.int64],
    table_lo: F32Array,
    table_hi: F32Array,
    day: int,
    reach: int,
    days: int,
) -> tuple[F32Array, float]:
    """[lowest, highest] for every slot of `day`: the extremes of that slot ± reach on each of
    the previous `days` days (NaN where they hold nothing), and the envelopes' median width,
    the scale of the day's scores. Only earlier days are read."""
    rows = len(table_day)
    earlier = 0
    for k in range(days + 1):
        other = day - days - 1 + k
        earlier += other >= 0 and table_day[other % rows] == other  # (-1: an empty row)
    if not earlier:
        return np.full((2, SLOTS_PER_DAY), np.nan, dtype=np.float32), 0.0
    # The previous days end to end, so that neighbours reach across midnight; the day itself
    # (after the last) is not read.
    lo = np.full((days + 1) * SLOTS_PER_DAY + reach, np.inf, dtype=np.float32)
    hi = np.full((days + 1) * SLOTS_PER_DAY + reach, -np.inf, dtype=np.float32)
    for k in range(days + 1):  # day - days - 1 .. day - 1
        other = day - days - 1 + k
        if table_day[other % rows] == other:
            lo[k * SLOTS_PER_DAY : (k + 1) * SLOTS_PER_DAY] = table_lo[other % rows]
            hi[k * SLOTS_PER_DAY : (k + 1) * SLOTS_PER_DAY] = table_hi[other % rows]
    # Slot s of previous day d (0 = `days` days ago) takes in entries from
    # (d + 1)·SLOTS + s - reach on, 2·reach + 1 of them.
    envelope = np.empty((2, SLOTS_PER_DAY), dtype=np.float32)
    widths = np.empty(SLOTS_PER_DAY)
    known = 0
    for s in range(SLOTS_PER_DAY):
        low, high = np.float32(np.inf), np.float32(-np.inf)
        for d in range(days):
            start = (d + 1) * SLOTS_PER_DAY + s - reach
            for i in range(start, start + 2 * reach + 1):
                low = min(low, lo[i])
                high = max(high, hi[i])
        if low > high:
            low = high = np.float32(np.nan)
        else:
            widths[known] = np.float64(high - low)
            known += 1
        envelope[0, s], envelope[1, s] = low, high
    return envelope, float(np.median(widths[:known])) if known else 0.0
