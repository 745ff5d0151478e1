"""Robust level detector: how far a point lies from the rolling median of the points before
it, in units of a robust noise scale (the rolling median of absolute successive differences).

Medians are exact order statistics, so unlike running sums they carry no floating-point
history: the result is bit-identical however the stream is batched.
"""

from typing import NamedTuple

import bottleneck as bn
import msgspec
import numpy as np
import numpy.typing as npt

from driftlock.wire.messages import AnomalyKind

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

_MEDIAN_ABS_DIFF_TO_SIGMA = 1.0 / (0.6744897501960817 * np.sqrt(2.0))
"""For iid Gaussian noise, median |x_t - x_{t-1}| = 0.6745·√2·σ."""
LEVEL_SHIFT_RUN = 3
"""Consecutive out-of-band points on one side that make a level shift rather than a spike."""


class DetectorConfig(msgspec.Struct, frozen=True, kw_only=True):
    window: int = 128
    warmup: int = 64
    threshold: float = 0.97
    """Anomaly when score ≥ threshold. score = 1 − 1/z² (Chebyshev's bound on how unusual a
    point z robust standard deviations away is), so 0.97 is z ≈ 5.8."""

    def __post_init__(self) -> None:
        if self.window < 8:
            raise ValueError("window must be at least 8")
        if not self.warmup >= 2:
            raise ValueError("warmup must be at least 2")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")

    @property
    def band_z(self) -> float:
        return float(1.0 / np.sqrt(1.0 - self.threshold))


class RobustState(msgspec.Struct, kw_only=True):
    """Compact serialisable state: the last `window` values and absolute differences."""

    count: int = 0
    values: bytes = b""
    diffs: bytes = b""
    run: int = 0
    """Signed length of the current run of out-of-band points (+ above, − below)."""


class Detections(NamedTuple):
    """Per-point results for one batch; `anomalies` indexes into the batch."""

    score: FloatArray
    lower: FloatArray
    upper: FloatArray
    anomalies: IntArray
    kinds: list[AnomalyKind]


class RobustDetector:
    name = "robust_level"

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()

    def detect(self, state: RobustState, values: FloatArray) -> tuple[RobustState, Detections]:
        cfg = self.config
        history = np.frombuffer(state.values, dtype=np.float64)
        diff_history = np.frombuffer(state.diffs, dtype=np.float64)
        n = len(values)
        series = np.concatenate((history, values))
        new_diffs = np.abs(np.diff(series[-n - 1 :])) if len(history) else np.abs(np.diff(values))
        diffs = np.concatenate((diff_history, new_diffs))

        # Baseline of point j = statistics of the window that ends just before it.
        median = _before_each_point(_rolling_median(series, cfg.window), n)
        scale = _before_each_point(_rolling_median(diffs, cfg.window), n)
        scale *= _MEDIAN_ABS_DIFF_TO_SIGMA
        scale = np.maximum(scale, 1e-9 * np.maximum(1.0, np.abs(median)))
        z = np.abs(values - median) / scale
        position = state.count + np.arange(n)
        z[(position < cfg.warmup) | np.isnan(z)] = 0.0
        score = np.where(z > 1.0, 1.0 - 1.0 / np.maximum(z, 1.0) ** 2, 0.0)
        half_band = cfg.band_z * scale
        lower, upper = median - half_band, median + half_band

        flagged = np.flatnonzero(score >= cfg.threshold)
        kinds, run = _classify(flagged, values, median, state.run, n)
        new_state = RobustState(
            count=state.count + n,
            values=series[-cfg.window :].tobytes(),
            diffs=diffs[-cfg.window :].tobytes(),
            run=run,
        )
        return new_state, Detections(score, lower, upper, flagged, kinds)


def _rolling_median(a: FloatArray, window: int) -> FloatArray:
    if len(a) == 0:
        return a
    return np.asarray(bn.move_median(a, min(window, len(a)), min_count=1), dtype=np.float64)


def _before_each_point(rolling: FloatArray, n: int) -> FloatArray:
    """For each of the last n points (the last entry of `rolling` belongs to the newest), the
    rolling statistic of the window that ends just before it; NaN where nothing is before."""
    start = len(rolling) - n - 1
    if start >= 0:
        return rolling[start : start + n]
    missing = min(-start, n)
    return np.concatenate((np.full(missing, np.nan), rolling[: n - missing]))


def _classify(
    flagged: IntArray, values: FloatArray, median: FloatArray, run: int, n: int
) -> tuple[list[AnomalyKind], int]:
    """Spike or dip, or level shift once a run on one side reaches LEVEL_SHIFT_RUN points.
    Loops over flagged points only, which are rare."""
    kinds: list[AnomalyKind] = []
    previous = -1
    for j in flagged:
        above = bool(values[j] > median[j])
        contiguous = j == previous + 1
        if contiguous and run != 0 and (run > 0) == above:
            run = run + 1 if above else run - 1
        else:
            run = 1 if above else -1
        previous = int(j)
        if abs(run) >= LEVEL_SHIFT_RUN:
            kinds.append(AnomalyKind.LEVEL_SHIFT)
        else:
            kinds.append(AnomalyKind.SPIKE if above else AnomalyKind.DIP)
    if n and (len(flagged) == 0 or flagged[-1] != n - 1):
        run = 0
    return kinds, run
