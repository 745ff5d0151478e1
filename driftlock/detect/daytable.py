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
    value of each slot, float32 [rows, slots]), or an empty one when none of this shape is
    stored. Compiled, so that a profile decodes its table in the same call that scores."""
    if len(day) == 8 * rows:
        return (
            np.frombuffer(day, dtype=np.int64).copy(),
            np.frombuffer(lo, dtype=np.float32).copy().reshape(rows, slots),
            np.frombuffer(hi, dtype=np.float32).copy().reshape(rows, slots),
        )
    return (
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
