"""Timestamp- and run-driven checks: `missing_data` and `flatline`.

Both fire on records only, so a stream that is always gappy or often flat does not alert
again and again: a gap must be GAP_FACTOR times the stream's usual interval and twice as long
as any gap seen since the warm-up; a run of identical values must be FLAT_MIN points long and
twice as long as any run that has ended before (so a stream that has never changed value,
a constant, never fires).
"""

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from driftlock.detect.rolling import FloatArray, before_each_point, extend, rolling_median
from driftlock.detect.state import DetectorState, floats, tail

GAP_WINDOW = 64
GAP_FACTOR = 10.0
FLAT_MIN = 12

BoolArray = npt.NDArray[np.bool_]


class RuleFlags(NamedTuple):
    missing: BoolArray
    flat: BoolArray
    interval: FloatArray
    """The stream's usual seconds between points, before each point (NaN without times)."""
    gap: FloatArray


def check_rules(
    state: DetectorState, ts: FloatArray | None, values: FloatArray, warmup: int
) -> tuple[RuleFlags, dict[str, object]]:
    n = len(values)
    scored = state.count + np.arange(n) >= warmup
    flat, flat_state = _flatline(state, values, scored)
    if ts is None:
        none = np.empty(n)
        none.fill(np.nan)
        return RuleFlags(np.zeros(n, dtype=bool), flat, none, none), flat_state

    gap = np.empty(n)
    gap[0] = np.nan if state.last_ts is None else ts[0] - state.last_ts
    np.subtract(ts[1:], ts[:-1], out=gap[1:])
    gap_series = extend(floats(state.gaps), gap)
    interval = before_each_point(rolling_median(gap_series, GAP_WINDOW), n)
    seen = np.where(scored & np.isfinite(gap), gap, 0.0)
    record = np.maximum(state.gap_record, np.maximum.accumulate(seen))
    record_before = np.concatenate(([state.gap_record], record[:-1]))
    with np.errstate(invalid="ignore"):
        missing = scored & (gap >= GAP_FACTOR * interval) & (gap > 2.0 * record_before)
    fields: dict[str, object] = {
        **flat_state,
        "gaps": tail(gap_series, GAP_WINDOW),
        "last_ts": float(ts[-1]),
        "gap_record": float(record[-1]),
    }
    return RuleFlags(missing, flat, interval, gap), fields


def _flatline(
    state: DetectorState, values: FloatArray, scored: BoolArray
) -> tuple[BoolArray, dict[str, object]]:
    n = len(values)
    history = floats(state.values)
    same = np.empty(n, dtype=bool)
    same[0] = bool(len(history) and state.count and values[0] == history[-1])
    np.equal(values[1:], values[:-1], out=same[1:])
    index = np.arange(n)
    last_change = np.maximum.accumulate(np.where(same, -1, index))
    run = np.where(last_change >= 0, index - last_change + 1, state.flat_run + index + 1)
    # A change at j ends the run before it (at the batch start: the stored run).
    ended = np.where(~same, np.concatenate(([state.flat_run], run[:-1])), 0)
    record = np.maximum(state.flat_record, np.maximum.accumulate(ended))
    flat = scored & (record > 0) & (run == np.maximum(FLAT_MIN, 2 * record))
    return flat, {"flat_run": int(run[-1]), "flat_record": int(record[-1])}
