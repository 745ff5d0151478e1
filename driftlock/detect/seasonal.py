"""`seasonal_profile`: the historical baseline comparison. For every 5-minute slot of the day
the table keeps the lowest and highest value seen in it on each of the last few days. When a
day starts, each slot gets its envelope: the extremes of that slot and its neighbours
(reaching as far as the stream's usual interval between points) on the previous `days` days.
The raw score is how far a point lies outside its slot's envelope, in units of the day's
median envelope width.

The table is updated one day at a time, in time order, and a day's envelopes read only earlier
days, so the result does not depend on how the batch was cut.
"""

from typing import NamedTuple

import bottleneck as bn
import numpy as np
import numpy.typing as npt

from driftlock.detect.rolling import FloatArray
from driftlock.detect.state import DetectorState, ints

SLOT_SECONDS = 300
SLOTS_PER_DAY = 86_400 // SLOT_SECONDS
MAX_REACH = 12
"""Neighbouring slots an envelope may take in on each side (one hour), for sparse streams."""
_TINY = 1e-9

F32Array = npt.NDArray[np.float32]


class SeasonalScores(NamedTuple):
    score: FloatArray
    """NaN where the profile holds nothing yet for the point's time of day."""
    lower: FloatArray
    upper: FloatArray
    """The envelope (NaN where the profile holds nothing yet for the point's time of day)."""
    scale: FloatArray
    """The day's median envelope width: the unit of the score."""


class _Table(NamedTuple):
    day: npt.NDArray[np.int64]
    lo: F32Array
    hi: F32Array


def seasonal_scores(
    state: DetectorState, ts: FloatArray, values: FloatArray, interval: FloatArray, days: int
) -> tuple[SeasonalScores, dict[str, object]]:
    """`interval` is the stream's usual seconds between points, before each point."""
    n = len(values)
    table = _load(state, days)
    absolute = np.floor(ts / SLOT_SECONDS).astype(np.int64)
    day = absolute // SLOTS_PER_DAY
    slot = absolute - day * SLOTS_PER_DAY
    today, reach, width = state.season_today, state.season_reach, state.season_width
    if len(state.envelope) == 8 * SLOTS_PER_DAY:
        envelope = np.frombuffer(state.envelope, dtype=np.float32).reshape(2, SLOTS_PER_DAY)
    else:
        envelope, width = _day_envelope(table, today, reach, days)
    if day[0] == today and day[-1] == today:  # the usual case: a batch within one day
        lower, upper = envelope[0, slot].astype(np.float64), envelope[1, slot].astype(np.float64)
        scale = np.full(n, width)
        _record(table, today, slot, values)
    else:
        lower, upper, scale = np.empty(n), np.empty(n), np.empty(n)
        changes = np.flatnonzero(day[1:] != day[:-1]) + 1
        for a, b in zip([0, *changes], [*changes, n], strict=True):
            if day[a] != today:
                # A new day: its reach follows the stream's usual interval as known at its
                # first point, whichever batch that point came in.
                today = int(day[a])
                usual = interval[a] if np.isfinite(interval[a]) else SLOT_SECONDS
                reach = int(min(MAX_REACH, max(1, np.ceil(usual / SLOT_SECONDS))))
                envelope, width = _day_envelope(table, today, reach, days)
            lower[a:b] = envelope[0, slot[a:b]]
            upper[a:b] = envelope[1, slot[a:b]]
            scale[a:b] = width
            _record(table, today, slot[a:b], values[a:b])

    outside = np.maximum(values - upper, lower - values)
    score = np.maximum(outside, 0.0) / np.maximum(scale, _TINY * np.maximum(1.0, np.abs(values)))
    history: dict[str, object] = {
        "season_today": today,
        "season_reach": reach,
        "season_width": width,
        "season_day": table.day.tobytes(),
        "season_lo": table.lo.tobytes(),
        "season_hi": table.hi.tobytes(),
        "envelope": envelope.tobytes(),
    }
    return SeasonalScores(score, lower, upper, scale), history


def _load(state: DetectorState, days: int) -> _Table:
    rows = days + 1
    if len(state.season_day) == 8 * rows:
        return _Table(
            ints(state.season_day).copy(),
            np.frombuffer(state.season_lo, dtype=np.float32).reshape(rows, -1).copy(),
            np.frombuffer(state.season_hi, dtype=np.float32).reshape(rows, -1).copy(),
        )
    return _Table(
        np.full(rows, -1, dtype=np.int64),
        np.full((rows, SLOTS_PER_DAY), np.inf, dtype=np.float32),
        np.full((rows, SLOTS_PER_DAY), -np.inf, dtype=np.float32),
    )


def _day_envelope(table: _Table, day: int, reach: int, days: int) -> tuple[F32Array, float]:
    """[lowest, highest] for every slot of `day`: the extremes of that slot ± reach on each of
    the previous `days` days (NaN where they hold nothing), and the envelopes' median width,
    the scale of the day's scores. Only earlier days are read."""
    rows = len(table.day)
    # The previous days end to end, so that neighbours reach across midnight; the day itself
    # (after the last) is not read.
    lo = np.full((days + 1) * SLOTS_PER_DAY + reach, np.inf, dtype=np.float32)
    hi = np.full((days + 1) * SLOTS_PER_DAY + reach, -np.inf, dtype=np.float32)
    for k in range(days + 1):  # day - days - 1 .. day - 1
        other = day - days - 1 + k
        if table.day[other % rows] == other:
            lo[k * SLOTS_PER_DAY : (k + 1) * SLOTS_PER_DAY] = table.lo[other % rows]
            hi[k * SLOTS_PER_DAY : (k + 1) * SLOTS_PER_DAY] = table.hi[other % rows]
    width = 2 * reach + 1
    lo = np.lib.stride_tricks.sliding_window_view(lo, width).min(axis=1)
    hi = np.lib.stride_tricks.sliding_window_view(hi, width).max(axis=1)
    # Entry i now covers slots i .. i + 2 reach: slot s of day k is entry k·SLOTS + s - reach.
    starts = SLOTS_PER_DAY - reach + np.arange(days) * SLOTS_PER_DAY
    index = starts[:, None] + np.arange(SLOTS_PER_DAY)[None, :]
    envelope = np.stack((lo[index].min(axis=0), hi[index].max(axis=0)))
    envelope[:, envelope[0] > envelope[1]] = np.nan
    widths = (envelope[1] - envelope[0]).astype(np.float64)
    known = widths[np.isfinite(widths)]
    return envelope, float(bn.median(known)) if len(known) else 0.0


def _record(table: _Table, day: int, slots: npt.NDArray[np.int64], values: FloatArray) -> None:
    row = day % len(table.day)
    if table.day[row] != day:
        table.day[row] = day
        table.lo[row] = np.inf
        table.hi[row] = -np.inf
    np.minimum.at(table.lo[row], slots, values.astype(np.float32))
    np.maximum.at(table.hi[row], slots, values.astype(np.float32))
