"""The historical profiles' table: for each slot of a day (5 minutes, an hour), the lowest and
highest value seen in it, on each of the last few days. Rows are a ring indexed by day
number; a row is cleared when a new day takes it over."""

import numpy as np
import numpy.typing as npt

from driftlock.detect.jit import jit

F32Array = npt.NDArray[np.float32]
DayArray = npt.NDArray[np.int64]


@jit
def load_table(
    day: bytes, lo: bytes, hi: bytes, rows: int, slots: int
) -> tuple[DayArray, F32Array, F32Array]:
    """A writable copy of the stored table (day number of each row, then the lowest and highest
    value of each slot, float32 [rows, slots]). Only rows holding a day are stored (see
    `stored_rows`), each back in its place, day % rows; a table stored whole, as states from
    before kept it, has the same rows and empty ones (day -1), which stay empty. A table of
    another shape is not read: an empty one instead. Compiled, so that a profile decodes its
    table in the same call that scores."""
    table_day = np.full(rows, -1, dtype=np.int64)
    table_lo = np.full((rows, slots), np.inf, dtype=np.float32)
    table_hi = np.full((rows, slots), -np.inf, dtype=np.float32)
    k = len(day) // 8
    if len(day) != 8 * k or k > rows or len(lo) != 4 * k * slots or len(hi) != len(lo):
        return table_day, table_lo, table_hi
    days = np.frombuffer(day, dtype=np.int64)
    lows = np.frombuffer(lo, dtype=np.float32).reshape(k, slots)
    highs = np.frombuffer(hi, dtype=np.float32).reshape(k, slots)
    for i in range(k):
        d = days[i]
        row = d % rows
        if d > table_day[row]:  # an empty row (-1) stays empty
            table_day[row] = d
            table_lo[row] = lows[i]
            table_hi[row] = highs[i]
    return table_day, table_lo, table_hi


@jit
def stored_rows(
    table_day: DayArray, table_lo: F32Array, table_hi: F32Array
) -> tuple[DayArray, F32Array, F32Array]:
    """The rows of the table that hold a day, in order, to store: a young stream's state does
    not carry the days it has not seen yet (most of the table)."""
    held = 0
    for d in table_day:
        held += d != -1
    slots = table_lo.shape[1]
    day = np.empty(held, dtype=np.int64)
    lo = np.empty((held, slots), dtype=np.float32)
    hi = np.empty((held, slots), dtype=np.float32)
    k = 0
    for row in range(len(table_day)):
        if table_day[row] != -1:
            day[k] = table_day[row]
            lo[k] = table_lo[row]
            hi[k] = table_hi[row]
            k += 1
    return day, lo, hi


@jit
def record(table_day: DayArray, table_lo: F32Array, table_hi: F32Array, day: int, slot: int,
           x: float) -> None:  # fmt: skip
    row = day % len(table_day)
    if table_day[row] != day:
        table_day[row] = day
        table_lo[row] = np.inf
        table_hi[row] = -np.inf
    table_lo[row, slot] = min(table_lo[row, slot], np.float32(x))
    table_hi[row, slot] = max(table_hi[row, slot], np.float32(x))
