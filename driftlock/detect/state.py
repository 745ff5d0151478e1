"""A stream's detector state: compact, msgspec-serialisable, bounded in size.

Arrays are stored as raw little-endian bytes; every field has a default, so a state written by
an older DriftLock (which had only `count`, `values` and `diffs`) still decodes, and the
detector carries on from the history it holds.
"""

import msgspec
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class DetectorState(msgspec.Struct, kw_only=True):
    count: int = 0
    """Points seen."""
    values: bytes = b""
    """The last `window + SHORT` values."""
    diffs: bytes = b""
    """|x_t - x_{t-1}| for the last `window + SHORT` points."""
    devs: bytes = b""
    """|x_t - rolling median before t| for the last `window` points: the robust scale."""
    scales: bytes = b""
    """The robust scale at the last epoch boundaries: the long-run floor under the scale."""
    cusum_up: int = 0
    cusum_down: int = 0
    """The change-point detector's CUSUMs, in 1/1024 robust sigma."""
    gaps: bytes = b""
    """Seconds between the last `GAP_WINDOW` consecutive points."""
    last_ts: float | None = None
    season_day: bytes = b""
    """Day number held by each stored row of the seasonal table: only rows holding a day are
    stored (a state from before stored all, -1 marking the empty ones)."""
    season_today: int = -1
    """The day the seasonal reach was set for."""
    season_reach: int = 1
    """Neighbouring slots the envelopes take in today (from the stream's usual interval)."""
    season_width: float = 0.0
    """Today's median envelope width: the seasonal scores' scale. (No NaN in the state: states
    are compared for equality, and NaN != NaN.)"""
    envelope: bytes = b""
    """float32 [2, slots]: today's seasonal envelope (lowest, highest) for every slot."""
    season_lo: bytes = b""
    season_hi: bytes = b""
    """float32 [stored rows, slots]: lowest and highest value seen in each 5-minute slot of a
    day."""
    flat_run: int = 0
    """Consecutive identical values up to the last point."""
    flat_record: int = 0
    """Longest run of identical values that has ended (0 while the value never changed)."""
    gap_record: float = 0.0
    """Longest gap between points seen after the warm-up."""
    hist: bytes = b""
    """int32 [detectors, bins]: each detector's raw scores on a log scale, for calibration."""
    refs: bytes = b""
    """Each detector's calibration reference: the configured quantile of its raw scores."""
    surprise: bytes = b""
    """Combined surprise of the last `refractory` points."""
    surprise_ts: bytes = b""
    """Their timestamps (NaN: none given); shorter in a state from before it, which means
    unknown for the oldest."""
    surprise_fast: bytes = b""
    """The same points' combined surprise without the level drift's part (empty in a state
    from before it: the combined surprise stands in)."""
    week_day: bytes = b""
    """Day number held by each stored row of the weekly table (as `season_day`)."""
    week_today: int = -1
    week_lo: bytes = b""
    week_hi: bytes = b""
    """float32 [stored rows, 24]: lowest and highest value seen in each hour of the last eight
    days (at most 8 rows)."""
    week_envelope: bytes = b""
    """float32 [2, 24]: today's envelope from the same weekday a week before."""
    centroids: bytes = b""
    """The learned shape model: k-means centroids of short difference vectors, then its
    distance unit (empty until trained)."""
    drift_ring: bytes = b""
    """float32: the level-drift detector's last `RING` recorded drifts (oldest first)."""
    drift_order: bytes = b""
    """uint8: the ring positions of `drift_ring`'s drifts in ascending order (equal ones
    oldest first), so that a call does not sort the ring again (empty in a state from before
    it: sorted once)."""
    pivots: bytes = b""
    """float64 [3]: the low middle value (the ((m + 1) // 2)-th smallest of m; NaN: none) of
    each window the next point's long rolling medians read (values, devs, diffs), which
    splits it into its halves in one pass (see `rolling.pivoted_median_before`); a state
    from before them (empty) pays one selection per window once."""


def floats(data: bytes) -> FloatArray:
    return np.frombuffer(data, dtype=np.float64)


def ints(data: bytes) -> IntArray:
    return np.frombuffer(data, dtype=np.int64)


def tail(a: FloatArray, n: int) -> bytes:
    """The last n entries as bytes."""
    return a[-n:].tobytes() if n else b""
