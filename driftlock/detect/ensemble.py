"""The detector the actors run: several cheap online detectors, each calibrated against its
own history on the stream, voting into one anomaly score in [0, 1].

1. Raw scores: `robust_level`, `change_point` (a CUSUM), `volatility` (robust statistics on
   the value window), `seasonal_profile` (the same time of day on previous days),
   `learned_shape` (which only corroborates the others) and `level_drift` (how far the
   hourly level moved in four hours, against how far it usually does). What the seasonal
   profile explains does not feed the CUSUM.
2. Calibration: each detector's surprise is log10(raw / ref), 0 below ref, ref being the
   configured quantile of its own raw scores on this stream (never below a floor that iid
   noise hardly reaches). The combined surprise is their mean, so a point that several
   detectors find unusual outranks one that only one of them does.
3. Refractory period: a point counts by how far its combined surprise exceeds ESCALATION
   times the largest one in the `refractory` points before it that are less than
   `refractory_seconds` older: an event is reported when it starts, not once per point while
   it lasts (and on a sparse stream, a surprise days ago does not mute today's). The slow
   `level_drift` holds back only the points it is surprised at itself: its long runs of
   small surprises (the level moved over hours) must not mute a spike that the point-scale
   detectors see, while its own surprise at a shift they reported when it started stays
   held back by theirs. The `missing_data` and `flatline` checks, which fire on records
   only, are never held back.
4. score = e / (e + SCORE_HALF), e being that excess; an anomaly when score ≥ threshold (the
   default 0.5: just beyond the stream's 99.9th percentile on one detector, after a quiet
   refractory period).

Everything a point's score depends on is a point before it, and the state holds only order
statistics, integer counts and sums, and per-day extremes: results are bit-identical however
the stream is batched.
"""

from collections.abc import Callable
from typing import NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from driftlock.detect.calibrate import Calibrator
from driftlock.detect.config import DetectorConfig
from driftlock.detect.drift import HISTORY, drift_scores
from driftlock.detect.jit import jit
from driftlock.detect.learned import learned_scores
from driftlock.detect.robust import SHORT, RobustScores, robust_scores
from driftlock.detect.rolling import FloatArray, extend
from driftlock.detect.rules import RuleFlags, check_rules
from driftlock.detect.seasonal import seasonal_scores
from driftlock.detect.state import DetectorState, floats, tail
from driftlock.detect.tuning import (
    DEFAULT_SENSITIVITY,
    DEFAULT_TUNING,
    StreamTuning,
    reference_shift,
)
from driftlock.detect.weekly import weekly_scores
from driftlock.wire.messages import AnomalyKind

IntArray = npt.NDArray[np.intp]
TuningSource = Callable[[str, str], StreamTuning]
"""(tenant, metric) → the stream's tuning: an in-memory lookup, never I/O."""

LEVEL, SEASONAL, CHANGE, VOLATILITY, SHAPE, DRIFT = range(6)
DETECTORS = (
    "robust_level",
    "seasonal_profile",
    "change_point",
    "volatility",
    "learned_shape",
    "level_drift",
)
FLOORS = np.array([4.5, 1.0, 6.0, 1.8, 3.0, 4.4])
"""Raw scores a detector never finds surprising, however quiet the stream: about what iid noise
reaches once in 100,000 points (robust sigmas; envelope widths outside; robust sigmas of
CUSUM; |log| of the volatility ratio, 1.8 being a sixfold change). The level drift's
(robust sigmas of the ring of drifts) is lower: iid noise starts a run beyond 4.4 about
once in 30,000 points, but a slow shift rarely gets much further, and its surprises hold
back no other detector's."""
PRIORS = np.array([6.0, 5.0, 8.0, 2.1, 4.0, 10.0])
"""References until a detector has MIN_HISTORY raw scores on the stream (the level drift's is
high: its ring is young for its first few hundred points)."""
RULE_SURPRISE = 1.0
SCORE_HALF = 0.0005
"""The excess surprise that scores 0.5 (in log10 units, averaged over the detectors)."""
ESCALATION = 10.0
"""Within the refractory period, a point must be this many times as surprising as the most
surprising point before it to be reported again: one alert per event, unless it grows tenfold."""
SUSTAINED = 3.0
"""Robust sigmas of CUSUM already built up before a point that make it part of a level shift."""


class Detections(NamedTuple):
    """Per-point results for one batch; `anomalies` indexes into the batch, and `kinds` and
    `detectors` (which detectors agreed) go with them."""

    score: FloatArray
    lower: FloatArray
    upper: FloatArray
    anomalies: IntArray
    kinds: list[AnomalyKind]
    detectors: list[list[str]]


class Detector:
    name = "driftlock"

    def __init__(
        self, config: DetectorConfig | None = None, tuning: TuningSource | None = None
    ) -> None:
        self.config = config or DetectorConfig()
        self._calibrator = Calibrator(self.config.quantile, FLOORS, PRIORS)
        self._tuning = tuning
        _warm_up(self)

    def tuning_for(self, tenant: str, metric: str) -> StreamTuning:
        """The stream's sensitivity and custom rules (the defaults without a source)."""
        return DEFAULT_TUNING if self._tuning is None else self._tuning(tenant, metric)

    def detect(
        self,
        state: DetectorState,
        values: FloatArray,
        ts: FloatArray | None = None,
        sensitivity: float = DEFAULT_SENSITIVITY,
    ) -> tuple[DetectorState, Detections]:
        """Score a batch of points in stream order; `ts` (epoch seconds) drives the seasonal
        profile and the missing-data check, which are off without it. `sensitivity` in [0, 1]
        (see `driftlock.detect.tuning`)."""
        cfg = self.config
        values = np.asarray(values, dtype=np.float64)
        n = len(values)
        if n == 0:
            empty = np.empty(0)
            return state, Detections(empty, empty, empty, np.empty(0, np.intp), [], [])
        if ts is not None:
            ts = np.asarray(ts, dtype=np.float64)

        scored = state.count + np.arange(n) >= cfg.warmup
        rules, rule_fields = check_rules(state, ts, values, cfg.warmup)
        season_fields: dict[str, object] = {}
        envelope_lo = envelope_hi = seasonal = _nans(n)
        if ts is not None:
            found, season_fields = seasonal_scores(
                state, ts, values, rules.interval, cfg.season_days
            )
            weekly, week_fields = weekly_scores(state, ts, values, found.scale)
            season_fields.update(week_fields)
            # A point either profile explains is explained: the same time yesterday, or the
            # same time on the same weekday a week ago.
            seasonal = np.fmin(found.score, weekly)
            envelope_lo, envelope_hi = found.lower, found.upper
        # What the seasonal profile explains is no deviation for the change-point detector.
        counted = scored & ~(seasonal == 0.0)
        history = extend(floats(state.values), values)
        robust, robust_fields = robust_scores(state, history, n, cfg.window, counted)
        shape, centroids = learned_scores(state, history, n, robust.scale)
        drift, drift_fields = drift_scores(state, history, n)
        # The level drift may read further back than the rolling window.
        robust_fields["values"] = tail(history, max(cfg.window + SHORT, HISTORY))
        raw = np.empty((len(DETECTORS), n))
        raw[LEVEL], raw[SEASONAL], raw[CHANGE], raw[VOLATILITY], raw[SHAPE], raw[DRIFT] = (
            robust.level,
            seasonal,
            robust.shift,
            robust.volatility,
            shape,
            drift,
        )
        surprise, refs, hist, last_refs = self._calibrator.surprise(
            state, raw, scored, reference_shift(sensitivity)
        )
        old_surprise = floats(state.surprise)
        score, lower, upper, recent, recent_fast, recent_ts = _combine(
            surprise,
            rules.missing,
            rules.flat,
            scored,
            old_surprise,
            _fast_surprise(state.surprise_fast, old_surprise),
            _surprise_times(state.surprise_ts, len(old_surprise)),
            _nans(n) if ts is None else ts,
            cfg.refractory,
            cfg.refractory_seconds,
            robust.median,
            robust.scale,
            refs[LEVEL],
        )
        anomalies = np.flatnonzero(score >= cfg.threshold)
        kinds, agreed = [], []
        for j in anomalies:
            votes = surprise[:, j]
            kinds.append(_kind(int(j), votes, values, robust, rules))
            agreed.append(
                [name for name, v in zip(DETECTORS, votes, strict=True) if v > 0]
                + (["missing_data"] if rules.missing[j] else [])
                + (["flatline"] if rules.flat[j] else [])
            )
            if int(np.argmax(votes)) == SEASONAL and np.isfinite(envelope_lo[j]):
                lower[j], upper[j] = envelope_lo[j], envelope_hi[j]

        # Fields a part did not touch (the seasonal table and gaps without timestamps) stay.
        new_state = msgspec.structs.replace(
            state,
            count=state.count + n,
            hist=hist,
            refs=last_refs,
            surprise=recent.tobytes(),
            surprise_fast=recent_fast.tobytes(),
            surprise_ts=recent_ts.tobytes(),
            centroids=centroids,
            **robust_fields,
            **rule_fields,
            **season_fields,
            **drift_fields,
        )
        return new_state, Detections(score, lower, upper, anomalies, kinds, agreed)


@jit
def _combine(
    surprise: FloatArray,
    missing: npt.NDArray[np.bool_],
    flat: npt.NDArray[np.bool_],
    scored: npt.NDArray[np.bool_],
    old_surprise: FloatArray,
    old_fast: FloatArray,
    old_ts: FloatArray,
    ts: FloatArray,
    refractory: int,
    refractory_seconds: float,
    median: FloatArray,
    scale: FloatArray,
    level_ref: FloatArray,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """The detectors' surprises [detector, point] → score, the expected band (the level
    detector's reference around the rolling median) and, to store, the combined surprise of
    the last `refractory` points, the same without the level drift's part, and their times
    (NaN: unknown). Sets the learned model's surprise to 0 where no other detector is
    surprised (in place)."""
    n = surprise.shape[1]
    h = len(old_surprise)
    series, fast = np.empty(h + n), np.empty(h + n)
    series[:h], fast[:h] = old_surprise, old_fast
    combined = series[h:]
    times = np.empty(h + n)
    times[:h] = old_ts
    times[h:] = ts
    score, lower, upper = np.empty(n), np.empty(n), np.empty(n)
    for j in range(n):
        # The learned model corroborates: alone, its 256-point memory is shorter than a day,
        # and a daily shape it has not seen would be an alert every day.
        if not ((surprise[:SHAPE, j] != 0.0).any() or (surprise[SHAPE + 1 :, j] != 0.0).any()):
            surprise[SHAPE, j] = 0.0
        fired = missing[j] or flat[j]
        total = 0.0
        for i in range(len(DETECTORS)):
            total += surprise[i, j]
        rule = RULE_SURPRISE * fired
        combined[j] = total / len(DETECTORS) + rule if scored[j] else 0.0
        fast[h + j] = (total - surprise[DRIFT, j]) / len(DETECTORS) + rule if scored[j] else 0.0
    for j in range(n):
        # The largest combined surprise in the refractory period: at most `refractory`
        # points back, and only as far as `refractory_seconds` (an unknown time: no limit).
        # The level drift's part holds back only a point the level drift is surprised at.
        held = series if surprise[DRIFT, j] > 0.0 else fast
        p, recent = h + j, 0.0
        i = p - 1
        while i >= 0 and p - i <= refractory and not times[p] - times[i] > refractory_seconds:
            recent = max(recent, held[i])
            i -= 1
        excess = max(0.0, combined[j] - ESCALATION * recent)
        if missing[j] or flat[j]:
            # A rule (flatline, missing data) fires on records only: it is never held back.
            excess = max(excess, RULE_SURPRISE)
        score[j] = excess / (excess + SCORE_HALF)
        half_band = level_ref[j] * scale[j]
        lower[j], upper[j] = median[j] - half_band, median[j] + half_band
    return (
        score,
        lower,
        upper,
        series[-refractory:].copy(),
        fast[-refractory:].copy(),
        times[-refractory:].copy(),
    )


def _fast_surprise(data: bytes, surprise: FloatArray) -> FloatArray:
    """The stored surprises without the level drift's part; a state from before they were
    kept has only the combined ones, which hold back as they did then."""
    fast = floats(data)
    return fast if len(fast) == len(surprise) else surprise


def _surprise_times(data: bytes, count: int) -> FloatArray:
    """The stored surprises' times; unknown (NaN) for any a state from before them lacks."""
    known = floats(data)
    if len(known) == count:
        return known
    times = _nans(count)
    keep = min(len(known), count)
    if keep:
        times[count - keep :] = known[len(known) - keep :]
    return times


_warm = False


def _warm_up(detector: Detector) -> None:
    """Load (or, the first time on a machine, compile) every compiled loop now, once per
    process, rather than in the middle of a partition's first batch: two days of points five
    minutes apart, through every kind of call an actor makes."""
    global _warm  # noqa: PLW0603 - once per process
    if _warm:
        return
    _warm = True
    ts: FloatArray = 1_700_006_400.0 + 300.0 * np.arange(600, dtype=np.float64)
    values: FloatArray = np.sin(np.arange(600, dtype=np.float64) / 20.0)
    state = DetectorState()
    decoder = msgspec.msgpack.Decoder(DetectorState)
    for start in range(0, 600, 100):
        state, _ = detector.detect(state, values[start : start + 100], ts[start : start + 100])
        state = decoder.decode(msgspec.msgpack.encode(state))
    detector.detect(state, values[:1], ts[-1:] + 300.0)
    detector.detect(state, values[:1])


def _nans(n: int) -> FloatArray:
    a = np.empty(n)
    a.fill(np.nan)
    return a


def _kind(
    j: int, votes: FloatArray, values: FloatArray, robust: RobustScores, rules: RuleFlags
) -> AnomalyKind:
    """What happened, from which detector is the most surprised and how the point got there."""
    if rules.missing[j]:
        return AnomalyKind.MISSING_DATA
    if rules.flat[j]:
        return AnomalyKind.FLATLINE
    top = int(np.argmax(votes))
    if top == VOLATILITY:
        return AnomalyKind.VARIANCE_CHANGE
    sustained = robust.built[j] >= SUSTAINED
    if top in (CHANGE, DRIFT):
        # The CUSUM or the level drift leads: a shift that no single point made unusual is a
        # trend change.
        return AnomalyKind.LEVEL_SHIFT if robust.level[j] >= SUSTAINED else AnomalyKind.TREND_CHANGE
    if sustained:
        return AnomalyKind.LEVEL_SHIFT
    median = robust.median[j]
    above = not np.isfinite(median) or values[j] >= median
    return AnomalyKind.SPIKE if above else AnomalyKind.DIP
