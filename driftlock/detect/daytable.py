"""The historical profiles' table: for each slot of a day (5 minutes, an hour), the lowest and
highest value seen in it, on each of the last few days. Rows are a ring indexed by day
number; a row is cleared when a new day takes it over."""

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from driftlock.detect.jit import jit
from driftlock.detect.state import ints

F32Array = npt.NDArray[np.float32]
DayArray = npt.NDArray[np.int64]


class DayTable(NamedTuple):
    day: DayArray
    """Day number held by each row (-1: empty)."""
    lo: F32Array
    hi: F32Array
    """float32 [rows, slots]."""


def load_table(day: bytes, lo: bytes, hi: bytes, rows: int, slots: int) -> DayTable:
    """A writable copy of the stored table, or an empty one when none of this shape is stored."""
    if len(day) == 8 * rows:
        return DayTable(
            ints(day).copy(),
            np.frombuffer(lo, dtype=np.float32).reshape(rows, slots).copy(),
            np.frombuffer(hi, dtype=np.float32).reshape(rows, slots).copy(),
        )
    return DayTable(
        np.full(rows, -1, dtype=np.int64),
        np.full((rows, slots), np.inf, dtype=np.float32),
        np.full((rows, slots), -np.inf, dtype=np.float32),
    )


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
