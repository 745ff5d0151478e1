"""A stream's detector state: compact, msgspec-serialisable, bounded in size.

Its byte fields (the tables: value windows, seasonal tables, histograms ...) are kept one after
another in one buffer, raw little-endian, each readable under its own name; a state goes to
the compiled detector and back as that one buffer (as 22 separate fields, joining and
splitting them cost about as much as scoring a point). Every field has a default, and a state
from an older DriftLock is upgraded when its record is read (`driftlock.state.records`).
"""

from collections.abc import Iterable
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

TABLES = (
    "values",
    "diffs",
    "devs",
    "scales",
    "drift_ring",
    "drift_order",
    "pivots",
    "hist",
    "refs",
    "surprise",
    "surprise_fast",
    "surprise_ts",
    "centroids",
    "gaps",
    "season_day",
    "season_lo",
    "season_hi",
    "envelope",
    "week_day",
    "week_lo",
    "week_hi",
    "week_envelope",
)
"""The state's tables, in the order `DetectorState.tables` holds them."""
END = np.dtype("<u4")
"""Where a table ends in `DetectorState.tables`: 4 GiB is far beyond any state."""
NO_ENDS = bytes(END.itemsize * len(TABLES))
"""The ends of a state whose tables are all empty."""


class Table:
    """A table of the state, read by its name: its part of `DetectorState.tables`."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._index = TABLES.index(name)

    def __get__(self, state: "DetectorState", owner: type | None = None) -> bytes:
        return state.table(self._index)


class DetectorState(msgspec.Struct, kw_only=True):
    count: int = 0
    """Points seen."""
    tables: bytes = b""
    """The tables (`TABLES`, in that order) one after another."""
    ends: bytes = b""
    """uint32 little-endian: where each table ends in `tables` (empty: all are empty)."""
    cusum_up: int = 0
    cusum_down: int = 0
    """The change-point detector's CUSUMs, in 1/1024 robust sigma."""
    last_ts: float | None = None
    season_today: int = -1
    """The day the seasonal reach was set for."""
    season_reach: int = 1
    """Neighbouring slots the envelopes take in today (from the stream's usual interval)."""
    season_width: float = 0.0
    """Today's median envelope width: the seasonal scores' scale. (No NaN in the state: states
    are compared for equality, and NaN != NaN.)"""
    flat_run: int = 0
    """Consecutive identical values up to the last point."""
    flat_record: int = 0
    """Longest run of identical values that has ended (0 while the value never changed)."""
    gap_record: float = 0.0
    """Longest gap between points seen after the warm-up."""
    week_today: int = -1

    values = Table()
    """The last `window + SHORT` values."""
    diffs = Table()
    """|x_t - x_{t-1}| for the last `window + SHORT` points."""
    devs = Table()
    """|x_t - rolling median before t| for the last `window` points: the robust scale."""
    scales = Table()
    """The robust scale at the last epoch boundaries: the long-run floor under the scale."""
    drift_ring = Table()
    """float32: the level-drift detector's last `RING` recorded drifts (oldest first)."""
    drift_order = Table()
    """uint8: the ring positions of `drift_ring`'s drifts in ascending order (equal ones
    oldest first), so that a call does not sort the ring again (empty in a state from before
    it: sorted once)."""
    pivots = Table()
    """float64 [3]: the low middle value (the ((m + 1) // 2)-th smallest of m; NaN: none) of
    each window the next point's long rolling medians read (values, devs, diffs), which
    splits it into its halves in one pass (see `rolling.pivoted_median_before`); a state
    from before them (empty) pays one selection per window once."""
    hist = Table()
    """int32 [detectors, bins]: each detector's raw scores on a log scale, for calibration."""
    refs = Table()
    """Each detector's calibration reference: the configured quantile of its raw scores."""
    surprise = Table()
    """Combined surprise of the last `refractory` points."""
    surprise_fast = Table()
    """The same points' combined surprise without the level drift's part (empty in a state
    from before it: the combined surprise stands in)."""
    surprise_ts = Table()
    """Their timestamps (NaN: none given); shorter in a state from before it, which means
    unknown for the oldest."""
    centroids = Table()
    """The learned shape model: k-means centroids of short difference vectors, then its
    distance unit (empty until trained)."""
    gaps = Table()
    """Seconds between the last `GAP_WINDOW` consecutive points."""
    season_day = Table()
    """Day number held by each stored row of the seasonal table: only rows holding a day are
    stored (a state from before stored all, -1 marking the empty ones)."""
    season_lo = Table()
    season_hi = Table()
    """float32 [stored rows, slots]: lowest and highest value seen in each 5-minute slot of a
    day."""
    envelope = Table()
    """float32 [2, slots]: today's seasonal envelope (lowest, highest) for every slot (empty
    while the table knows nothing for today)."""
    week_day = Table()
    """Day number held by each stored row of the weekly table (as `season_day`)."""
    week_lo = Table()
    week_hi = Table()
    """float32 [stored rows, 24]: lowest and highest value seen in each hour of the last eight
    days (at most 8 rows)."""
    week_envelope = Table()
    """float32 [2, 24]: today's envelope from the same weekday a week before."""

    def table(self, index: int) -> bytes:
        """The `TABLES[index]` table."""
        if not self.ends:
            return b""
        ends = self.ends
        at = END.itemsize * index
        start = int.from_bytes(ends[at - END.itemsize : at], "little") if index else 0
        return self.tables[start : int.from_bytes(ends[at : at + END.itemsize], "little")]

    def each_table(self) -> list[bytes]:
        """All tables, in `TABLES` order."""
        if not self.ends:
            return [b""] * len(TABLES)
        ends = np.frombuffer(self.ends, dtype=END).tolist()
        return list(map(self.tables.__getitem__, map(slice, [0, *ends[:-1]], ends)))

    def replaced(self, **changes: Any) -> "DetectorState":
        """A copy with the given fields and tables (by name) changed."""
        new = {name: changes.pop(name) for name in TABLES if name in changes}
        if new:
            tables = zip(TABLES, self.each_table(), strict=True)
            changes["tables"], changes["ends"] = packed(new.get(n, t) for n, t in tables)
        return msgspec.structs.replace(self, **changes)


def packed(tables: Iterable[bytes]) -> tuple[bytes, bytes]:
    """Tables in `TABLES` order as `DetectorState.tables` and `.ends`."""
    parts = list(tables)
    if len(parts) != len(TABLES):
        raise ValueError(f"{len(parts)} tables given, a state has {len(TABLES)}")
    ends = np.cumsum([len(p) for p in parts]).astype(END)
    return b"".join(parts), ends.tobytes()


def new_state(**fields: Any) -> DetectorState:
    """A state built from fields and tables by name (the others at their defaults)."""
    return DetectorState().replaced(**fields)


def floats(data: bytes) -> FloatArray:
    return np.frombuffer(data, dtype=np.float64)


def ints(data: bytes) -> IntArray:
    return np.frombuffer(data, dtype=np.int64)


def tail(a: FloatArray, n: int) -> bytes:
    """The last n entries as bytes."""
    return a[-n:].tobytes() if n else b""
