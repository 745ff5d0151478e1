"""Detector configuration: one set of defaults for every stream, the ones NAB is measured with."""

import msgspec


class DetectorConfig(msgspec.Struct, frozen=True, kw_only=True):
    window: int = 256
    """Points in the rolling baselines (level, scale, volatility)."""
    warmup: int = 64
    """Points before a stream is scored at all."""
    threshold: float = 0.5
    """Anomaly when score ≥ threshold (tenants tune per metric with a sensitivity instead, see
    `driftlock.detect.tuning`). The score is `e / (e + SCORE_HALF)`, e
    being how far the detectors' calibrated surprise exceeds what came before it in the
    refractory period (see `driftlock.detect.ensemble`); 0.5 means e = SCORE_HALF."""
    quantile: float = 0.999
    """Each detector's raw score is measured against this quantile of its own history on the
    stream: surprise = log10(raw / quantile), 0 below it."""
    season_days: int = 3
    """Days of time-of-day profile the seasonal detector compares against."""
    refractory: int = 100
    """Points after a surprising point during which another must be ESCALATION times as
    surprising to be reported: one alert per event."""
    refractory_seconds: float = 86_400.0
    """...and never longer than this (with timestamps): on an hourly stream 100 points are
    four days, and an event a day or more after the last is a new one."""

    def __post_init__(self) -> None:
        if self.window < 8:
            raise ValueError("window must be at least 8")
        if not self.warmup >= 2:
            raise ValueError("warmup must be at least 2")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if not 0.5 <= self.quantile < 1.0:
            raise ValueError("quantile must be in [0.5, 1)")
        if not 1 <= self.season_days <= 14:
            raise ValueError("season_days must be in 1..14")
        if not 1 <= self.refractory <= 10_000:
            raise ValueError("refractory must be in 1..10000")
        if not self.refractory_seconds > 0.0:
            raise ValueError("refractory_seconds must be positive")
