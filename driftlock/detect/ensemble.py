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

import math
import threading
from array import array
from collections.abc import Callable, Sequence
from itertools import chain
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from driftlock.detect import robust
from driftlock.detect.calibrate import BINS, Calibrator, stored_surprise, whole_calibration
from driftlock.detect.config import DetectorConfig
from driftlock.detect.drift import HISTORY, drift_kernel
from driftlock.detect.jit import jit, jit_holding_gil
from driftlock.detect.learned import trained_scores
from driftlock.detect.robust import SHORT, robust_rows
from driftlock.detect.rolling import FloatArray
from driftlock.detect.rules import BoolArray, both_checks, flatline
from driftlock.detect.seasonal import season
from driftlock.detect.state import NO_ENDS, TABLES, DetectorState
from driftlock.detect.tuning import (
    DEFAULT_SENSITIVITY,
    DEFAULT_TUNING,
    StreamTuning,
    reference_shift,
)
from driftlock.detect.weekly import week_kernel
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
        cfg, cal = self.config, self._calibrator
        self._settings = (
            (cfg.warmup, cfg.window, cfg.season_days),
            (
                float(cal.quantile),
                cal.floors,
                cal.priors,
                cfg.refractory,
                float(cfg.refractory_seconds),
                float(cfg.threshold),
            ),
        )
        """`_many`'s last two arguments, the configuration: the same for every call."""
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
        cfg, cal = self.config, self._calibrator
        values = np.asarray(values, dtype=np.float64)
        n = len(values)
        if n == 0:
            return state, _nothing()
        timed = ts is not None
        # Scalars as the compiled call was compiled for (float(): a state or config built in
        # Python with an int there must not compile a second version of it mid-batch).
        times = np.asarray(ts, dtype=np.float64) if ts is not None else _nans(n)
        t = dict(zip(TABLES, state.each_table(), strict=True))
        before = (
            values,
            times,
            timed,
            state.count,
            cfg.warmup,
            cfg.window,
            cfg.season_days,
            t["values"],
            state.flat_run,
            state.flat_record,
            np.nan if state.last_ts is None else float(state.last_ts),
            t["gaps"],
            float(state.gap_record),
            t["season_day"],
            t["season_lo"],
            t["season_hi"],
            t["envelope"],
            state.season_today,
            state.season_reach,
            float(state.season_width),
            t["week_day"],
            t["week_lo"],
            t["week_hi"],
            t["week_envelope"],
            state.week_today,
            t["diffs"],
            t["devs"],
            t["scales"],
            state.cusum_up,
            state.cusum_down,
            t["drift_ring"],
            t["drift_order"],
            t["pivots"],
        )
        after = (
            state.count,
            *cal.stored(state),
            reference_shift(sensitivity),
            float(cal.quantile),
            cal.floors,
            cal.priors,
            t["surprise"],
            t["surprise_fast"],
            t["surprise_ts"],
            cfg.refractory,
            float(cfg.refractory_seconds),
            float(cfg.threshold),
        )
        # One compiled call, the learned model's trainings included (the first one too: in
        # Python it held the GIL for ~0.5 ms a stream, and streams that start together train
        # together).
        whole = _whole_holding_gil if threading.current_thread() is _MAIN else _whole
        front, back, model, retrained = whole(before, t["centroids"], after)
        f, c = _Front._make(front), _Combined._make(back)
        centroids = model.tobytes() if retrained else t["centroids"]
        score, lower, upper, anomalies = c.score, c.lower, c.upper, c.anomalies
        kinds, agreed = _named(
            anomalies,
            values,
            c.surprise,
            f.rows,
            f.missing,
            f.flat,
            (f.envelope_lo, f.envelope_hi),
            (lower, upper),
        )

        # Fields a part did not touch (the seasonal table and gaps without timestamps) stay.
        fields: dict[str, object] = {}
        if timed:
            fields.update(
                gaps=f.gaps.tobytes(),
                last_ts=float(times[-1]),
                gap_record=f.gap_record,
                season_today=f.season_today,
                season_reach=f.season_reach,
                season_width=f.season_width,
                season_day=f.season_day.tobytes(),
                season_lo=f.season_lo.tobytes(),
                season_hi=f.season_hi.tobytes(),
                envelope=f.envelope.tobytes(),
                week_today=f.week_today,
                week_day=f.week_day.tobytes(),
                week_lo=f.week_lo.tobytes(),
                week_hi=f.week_hi.tobytes(),
                week_envelope=f.week_envelope.tobytes(),
            )
        new_state = state.replaced(
            count=state.count + n,
            values=f.kept.tobytes(),
            flat_run=f.flat_run,
            flat_record=f.flat_record,
            diffs=f.diffs.tobytes(),
            devs=f.devs.tobytes(),
            scales=f.scales.tobytes(),
            cusum_up=f.cusum_up,
            cusum_down=f.cusum_down,
            drift_ring=f.drift_ring.tobytes(),
            drift_order=f.drift_order.tobytes(),
            pivots=f.pivots.tobytes(),
            centroids=centroids,
            hist=c.hist.tobytes(),
            refs=c.refs.tobytes(),
            surprise=c.recent.tobytes(),
            surprise_fast=c.recent_fast.tobytes(),
            surprise_ts=c.recent_ts.tobytes(),
            **fields,
        )
        return new_state, Detections(score, lower, upper, anomalies, kinds, agreed)

    def detect_many(
        self,
        states: Sequence[DetectorState],
        batches: Sequence[tuple[FloatArray, FloatArray]],
        sensitivities: Sequence[float],
    ) -> list[tuple[DetectorState, Detections]]:
        """`detect` for several streams in one compiled call: for each, its state, a batch of
        (values, epoch-second timestamps) and its sensitivity. The results are `detect`'s,
        bit for bit; only the cost differs.

        A `detect` call on one point cost ~60 µs, ~14 of them scoring: the rest handed the
        state's 25 fields to the compiled code and back, one Python object each way (every
        array it returned was also a Python call of numba's), and on a detection thread it
        gave the GIL up and waited to get it back, stream after stream. Here the tables of
        all the states go in as one joined buffer, and the new states come back as one."""
        lengths = [len(v) for v, _ in batches]
        if not all(lengths):  # nothing to score for some: they keep their state
            some = [k for k, n in enumerate(lengths) if n]
            scored = iter(
                self.detect_many(
                    [states[k] for k in some],
                    [batches[k] for k in some],
                    [sensitivities[k] for k in some],
                )
            )
            return [
                next(scored) if n else (s, _nothing()) for s, n in zip(states, lengths, strict=True)
            ]
        if not states:
            return []
        values, times = _column([v for v, _ in batches]), _column([t for _, t in batches])
        return self.detect_joined(states, values, times, lengths, sensitivities)

    def detect_joined(
        self,
        states: Sequence[DetectorState],
        values: FloatArray,
        times: FloatArray,
        lengths: list[int],
        sensitivities: Sequence[float],
    ) -> list[tuple[DetectorState, Detections]]:
        """`detect_many` with the batches end to end: the values and times of every stream
        in turn, `lengths[k]` (at least one) of them stream k's. For a caller that has them
        so already (a partition worker, for a piece's streams), it spares a numpy call or
        two per stream."""
        values, times = _writable(values), _writable(times)
        many = _many_holding_gil if threading.current_thread() is _MAIN else _many
        arguments = (*_joined(states, lengths, sensitivities), *self._settings)
        found = _Many._make(many(values, times, *arguments))
        return _split(found, states, lengths, values, times)


class _Front(NamedTuple):
    """What `_front` hands back: the series (stored values, then the batch), the raw scores
    [detector, point] (the learned model's still NaN), which points are scored, the rules'
    flags, the robust rows (see `robust.LEVEL` ...), the seasonal envelopes, and the fields to
    store (the timestamp-driven ones empty without timestamps)."""

    series: FloatArray
    raw: FloatArray
    scored: BoolArray
    missing: BoolArray
    flat: BoolArray
    rows: FloatArray
    envelope_lo: FloatArray
    envelope_hi: FloatArray
    kept: FloatArray
    flat_run: int
    flat_record: int
    gaps: FloatArray
    gap_record: float
    season_day: npt.NDArray[np.int64]
    season_lo: npt.NDArray[np.float32]
    season_hi: npt.NDArray[np.float32]
    envelope: npt.NDArray[np.float32]
    season_today: int
    season_reach: int
    season_width: float
    week_day: npt.NDArray[np.int64]
    week_lo: npt.NDArray[np.float32]
    week_hi: npt.NDArray[np.float32]
    week_envelope: npt.NDArray[np.float32]
    week_today: int
    diffs: FloatArray
    devs: FloatArray
    scales: FloatArray
    cusum_up: int
    cusum_down: int
    drift_ring: npt.NDArray[np.float32]
    drift_order: npt.NDArray[np.uint8]
    pivots: FloatArray


class _Combined(NamedTuple):
    """What `_back` hands back: the surprises [detector, point], the calibration to store,
    the score and band, the refractory period's surprises and times to store, and the
    anomalies (indices into the batch; found here, where a numpy call in Python costs more
    than all the comparisons)."""

    surprise: FloatArray
    hist: npt.NDArray[np.int32]
    refs: FloatArray
    score: FloatArray
    lower: FloatArray
    upper: FloatArray
    recent: FloatArray
    recent_fast: FloatArray
    recent_ts: FloatArray
    anomalies: IntArray


@jit
def _front(
    values: FloatArray,
    ts: FloatArray,
    timed: bool,
    count: int,
    warmup: int,
    window: int,
    days: int,
    stored_values: bytes,
    flat_run: int,
    flat_record: int,
    last_ts: float,
    stored_gaps: bytes,
    gap_record: float,
    season_day: bytes,
    season_lo: bytes,
    season_hi: bytes,
    season_envelope: bytes,
    season_today: int,
    season_reach: int,
    season_width: float,
    week_day: bytes,
    week_lo: bytes,
    week_hi: bytes,
    week_envelope: bytes,
    week_today: int,
    stored_diffs: bytes,
    stored_devs: bytes,
    stored_scales: bytes,
    cusum_up: int,
    cusum_down: int,
    stored_ring: bytes,
    stored_order: bytes,
    stored_pivots: bytes,
) -> tuple[Any, ...]:  # see _Front
    """Every detector but the learned model, the rules and the seasonal profiles (those only
    with timestamps) in one compiled call, reading the stored fields from the state's bytes;
    see `_Front`."""
    n = len(values)
    old = np.frombuffer(stored_values, dtype=np.float64)
    series = np.empty(len(old) + n)
    series[: len(old)] = old
    series[len(old) :] = values
    last = old[-1] if len(old) and count else np.nan
    scored = np.empty(n, dtype=np.bool_)
    for j in range(n):
        scored[j] = count + j >= warmup
    no_table = np.empty((0, 0), dtype=np.float32)
    if timed:
        flat, flat_run, flat_record, missing, interval, _, gaps, gap_record = both_checks(
            values,
            last,
            flat_run,
            flat_record,
            ts,
            last_ts,
            stored_gaps,
            gap_record,
            count,
            warmup,
        )
        (
            found,
            lower,
            upper,
            scale,
            s_day,
            s_lo,
            s_hi,
            s_env,
            season_today,
            season_reach,
            season_width,
        ) = season(
            ts,
            values,
            interval,
            season_day,
            season_lo,
            season_hi,
            season_envelope,
            season_today,
            season_reach,
            season_width,
            days,
        )
        weekly, w_day, w_lo, w_hi, w_env, week_today = week_kernel(
            ts, values, scale, week_day, week_lo, week_hi, week_envelope, week_today
        )
        # A point either profile explains is explained: the same time yesterday, or the same
        # time on the same weekday a week ago.
        seasonal = np.fmin(found, weekly)
    else:
        flat, flat_run, flat_record = flatline(values, last, count, warmup, flat_run, flat_record)
        missing = np.zeros(n, dtype=np.bool_)
        gaps = np.empty(0)
        seasonal = lower = upper = _nans(n)
        s_day = w_day = np.empty(0, dtype=np.int64)
        s_lo = s_hi = s_env = w_lo = w_hi = w_env = no_table
    # What the seasonal profile explains is no deviation for the change-point detector.
    counted = np.empty(n, dtype=np.bool_)
    for j in range(n):
        counted[j] = scored[j] and seasonal[j] != 0.0
    pivots = (np.nan, np.nan, np.nan)  # unknown: a state from before them
    if len(stored_pivots) == 24:
        known = np.frombuffer(stored_pivots, dtype=np.float64)
        pivots = (known[0], known[1], known[2])
    rows, diffs, devs, scales, cusum_up, cusum_down, pivots = robust_rows(
        series,
        n,
        window,
        counted,
        stored_diffs,
        stored_devs,
        stored_scales,
        count,
        cusum_up,
        cusum_down,
        pivots,
    )
    old_ring = np.frombuffer(stored_ring, dtype=np.float32).astype(np.float64)
    drift, ring, order = drift_kernel(series, n, count, old_ring, stored_order)
    raw = np.empty((len(DETECTORS), n))
    raw[LEVEL] = rows[robust.LEVEL]
    raw[SEASONAL] = seasonal
    raw[CHANGE] = rows[robust.SHIFT]
    raw[VOLATILITY] = rows[robust.VOLATILITY]
    raw[SHAPE] = np.nan
    raw[DRIFT] = drift
    # The level drift may read further back than the rolling window.
    kept = series[max(0, len(series) - max(window + SHORT, HISTORY)) :].copy()
    return (
        series,
        raw,
        scored,
        missing,
        flat,
        rows,
        lower,
        upper,
        kept,
        flat_run,
        flat_record,
        gaps,
        gap_record,
        s_day,
        s_lo,
        s_hi,
        s_env,
        season_today,
        season_reach,
        season_width,
        w_day,
        w_lo,
        w_hi,
        w_env,
        week_today,
        diffs,
        devs,
        scales,
        cusum_up,
        cusum_down,
        ring.astype(np.float32),
        order,
        np.array(pivots),
    )


@jit
def _back(
    raw: FloatArray,
    scored: BoolArray,
    missing: BoolArray,
    flat: BoolArray,
    ts: FloatArray,
    median: FloatArray,
    scale: FloatArray,
    count: int,
    stored_hist: bytes,
    stored_refs: bytes,
    shift: float,
    quantile: float,
    floors: FloatArray,
    priors: FloatArray,
    stored_recent: bytes,
    stored_fast: bytes,
    stored_times: bytes,
    refractory: int,
    refractory_seconds: float,
    threshold: float,
) -> tuple[Any, ...]:  # see _Combined
    """Calibration, then `_combine`, in one compiled call; see `_Combined`. The stored
    surprises without the level drift's part stand in as the combined ones in a state from
    before they were kept (which hold back as they did then), and their times are unknown
    (NaN) for any a state from before them lacks."""
    surprise, at, hist, refs = stored_surprise(
        raw, scored, count, stored_hist, stored_refs, shift, quantile, floors, priors
    )
    old = np.frombuffer(stored_recent, dtype=np.float64)
    fast = np.frombuffer(stored_fast, dtype=np.float64)
    if len(fast) != len(old):
        fast = old
    known = np.frombuffer(stored_times, dtype=np.float64)
    times = _nans(len(old))
    keep = min(len(known), len(old))
    times[len(old) - keep :] = known[len(known) - keep :]
    score, lower, upper, recent, recent_fast, recent_ts = _combine(
        surprise,
        missing,
        flat,
        scored,
        old,
        fast,
        times,
        ts,
        refractory,
        refractory_seconds,
        median,
        scale,
        at[LEVEL],
    )
    anomalies = np.flatnonzero(score >= threshold)
    return surprise, hist, refs, score, lower, upper, recent, recent_fast, recent_ts, anomalies


@jit
def _whole(
    before: tuple[Any, ...], centroids: bytes, after: tuple[Any, ...]
) -> tuple[tuple[Any, ...], tuple[Any, ...], FloatArray, bool]:
    """`_front`, the learned model (trained at its boundaries) and `_back` in one compiled
    call; also the model and whether it was retrained."""
    f = _front(*before)
    series, raw, scored, missing, flat, rows = f[0], f[1], f[2], f[3], f[4], f[5]
    raw[SHAPE], model, retrained = trained_scores(
        centroids, series, len(before[0]), rows[robust.SCALE], before[3]
    )
    b = _back(
        raw, scored, missing, flat, before[1], rows[robust.MEDIAN], rows[robust.SCALE], *after
    )
    return f, b, model, retrained


@jit_holding_gil
def _whole_holding_gil(
    before: tuple[Any, ...], centroids: bytes, after: tuple[Any, ...]
) -> tuple[tuple[Any, ...], tuple[Any, ...], FloatArray, bool]:
    """`_whole` for the main thread, where a node's event loop scores its small batches: a
    call that let the GIL go would, whenever a detection thread holds it, wait up to the
    interpreter's switch interval (5 ms) to get it back, for a call of well under 1 ms."""
    return _whole(before, centroids, after)


_MAIN = threading.main_thread()


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
        # and a daily shape it has not seen would be an alert every day. (A loop: comparing
        # two slices made two arrays a point, and this function cost 62 ns a point, not 20.)
        corroborated = False
        for i in range(len(DETECTORS)):
            corroborated |= i != SHAPE and surprise[i, j] != 0.0
        if not corroborated:
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
        # (Surprises are never negative: a point with none has no excess, whatever came
        # before it, and most points have none.)
        excess = 0.0
        if combined[j] > 0.0:
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


def _writable(a: FloatArray) -> FloatArray:
    """`a` as `_many` takes it, a writable float64 array: a read-only one would have it
    compiled anew, mid-batch. (Checked first: `np.require` alone cost 2.5 µs a call.)"""
    flags = a.flags
    if a.dtype == np.float64 and flags.c_contiguous and flags.writeable:
        return a
    return np.require(a, np.float64, ("C", "W"))


def _column(parts: list[FloatArray]) -> FloatArray:
    """The batches' arrays end to end."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _joined(
    states: Sequence[DetectorState], lengths: list[int], sensitivities: Sequence[float]
) -> tuple[Any, ...]:
    """`_many`'s arguments after the points and before the configuration: how many points
    each stream has; the states' tables joined, each state's size, and where each of its
    tables ends (uint32, as the states keep them); then their integer and float fields
    ([stream × field], flat).

    Plain bytes and `array`s, which the compiled code reads as they are: each numpy call
    here cost 1-5 µs, and 20 of them made a third of a call on one stream (ad hoc)."""
    buffers = [s.tables for s in states]
    reals = array("d")
    for s, sensitivity in zip(states, sensitivities, strict=True):
        last_ts = math.nan if s.last_ts is None else s.last_ts
        reals.extend((last_ts, s.gap_record, s.season_width, reference_shift(sensitivity)))
    return (
        array("q", lengths),
        b"".join(buffers),
        array("q", map(len, buffers)),
        b"".join([s.ends or NO_ENDS for s in states]),
        array("q", chain.from_iterable(map(_INTS, states))),
        reals,
    )


def _split(
    m: "_Many",
    states: Sequence[DetectorState],
    lengths: list[int],
    values: FloatArray,
    times: FloatArray,
) -> list[tuple[DetectorState, Detections]]:
    """`_many`'s results, stream by stream: its new state and its detections."""
    points = m.points
    score, lower, upper = points[_SCORE], points[_LOWER], points[_UPPER]
    packed, all_ends, size = m.packed, m.packed_ends.tobytes(), len(NO_ENDS)
    scalars, more = m.ints.tolist(), m.floats.tolist()
    results: list[tuple[DetectorState, Detections]] = []
    start = found = byte = 0
    for k, state in enumerate(states):
        end = start + lengths[k]
        found_end, bound, flat_run, flat_record, today, reach, week_today, up, down = scalars[k]
        gap_record, width = more[k]
        new_state = msgspec.structs.replace(
            state,
            count=state.count + lengths[k],
            last_ts=float(times[end - 1]),
            flat_run=flat_run,
            flat_record=flat_record,
            gap_record=gap_record,
            season_today=today,
            season_reach=reach,
            season_width=width,
            week_today=week_today,
            cusum_up=up,
            cusum_down=down,
            tables=packed[byte:bound].tobytes(),
            ends=all_ends[k * size : (k + 1) * size],
        )
        byte = bound
        anomalies = m.anomalies[found:found_end]
        found = found_end
        band = (lower[start:end], upper[start:end])
        kinds: list[AnomalyKind] = []
        agreed: list[list[str]] = []
        if len(anomalies):
            kinds, agreed = _named(
                anomalies,
                values[start:end],
                points[_SURPRISE:_ROBUST, start:end],
                points[_ROBUST:, start:end],
                m.flags[0, start:end],
                m.flags[1, start:end],
                (points[_ENVELOPE_LO, start:end], points[_ENVELOPE_HI, start:end]),
                band,
            )
        found_here = Detections(score[start:end], *band, anomalies, kinds, agreed)
        results.append((new_state, found_here))
        start = end
    return results


def _nothing() -> Detections:
    """The results of no points."""
    empty = np.empty(0)
    return Detections(empty, empty, empty, np.empty(0, np.intp), [], [])


def _named(
    anomalies: IntArray,
    values: FloatArray,
    surprise: FloatArray,
    rows: FloatArray,
    missing: BoolArray,
    flat: BoolArray,
    envelope: tuple[FloatArray, FloatArray],
    band: tuple[FloatArray, FloatArray],
) -> tuple[list[AnomalyKind], list[list[str]]]:
    """Each anomaly's kind and the detectors that agreed; where the seasonal profile is the
    most surprised, its envelope becomes the expected band (in place)."""
    kinds, agreed = [], []
    for j in anomalies:
        votes = surprise[:, j]
        kinds.append(_kind(int(j), votes, values, rows, missing, flat))
        agreed.append(
            [name for name, v in zip(DETECTORS, votes, strict=True) if v > 0]
            + (["missing_data"] if missing[j] else [])
            + (["flatline"] if flat[j] else [])
        )
        if int(np.argmax(votes)) == SEASONAL and np.isfinite(envelope[0][j]):
            band[0][j], band[1][j] = envelope[0][j], envelope[1][j]
    return kinds, agreed


_JOINED = (
    "values",
    "gaps",
    "season_day",
    "season_lo",
    "season_hi",
    "envelope",
    "week_day",
    "week_lo",
    "week_hi",
    "week_envelope",
    "diffs",
    "devs",
    "scales",
    "drift_ring",
    "drift_order",
    "pivots",
    "centroids",
    "surprise",
    "surprise_fast",
    "surprise_ts",
)
"""The state's tables `_many` reads, in the order it reads them (the histogram and references
come apart, as `whole_calibration` completes them)."""
_READ = np.array([TABLES.index(name) for name in _JOINED], dtype=np.int64)
_INT_NAMES = (
    "count",
    "flat_run",
    "flat_record",
    "season_today",
    "season_reach",
    "week_today",
    "cusum_up",
    "cusum_down",
)
"""A state's integer fields, in the order `_many` reads them."""
_INTS = attrgetter(*_INT_NAMES)
_INT_FIELDS = len(_INT_NAMES)
_FLOAT_FIELDS = 4
"""last_ts, gap_record, season_width and the reference shift, in `_joined`'s order."""
ROWS = robust.BUILT + 1


class _Many(NamedTuple):
    """What `_many` hands back, in few arrays (each array handed back to Python cost a
    boxing and an unpickled dtype, ~1 µs apiece): for every point of all the batches its
    score, band, seasonal envelope, surprises and robust rows ([row, point], rows from
    `_SCORE` on) and its rules' flags ([missing / flat, point]); the anomalies (indices
    into their own batch); the new states' tables packed, each stream's in `TABLES` order,
    and where each of its tables ends from the stream's start, as a state keeps them
    ([stream, table]); per stream, where its anomalies and its tables end, then its other
    integer fields, and its float fields ([stream, field])."""

    points: FloatArray
    flags: BoolArray
    anomalies: IntArray
    packed: npt.NDArray[np.uint8]
    packed_ends: npt.NDArray[np.uint32]
    ints: npt.NDArray[np.int64]
    floats: FloatArray


_SCORE, _LOWER, _UPPER, _ENVELOPE_LO, _ENVELOPE_HI, _SURPRISE = range(6)
_ROBUST = _SURPRISE + len(DETECTORS)
_POINT_ROWS = _ROBUST + ROWS


@jit
def _many(
    values: FloatArray,
    ts: FloatArray,
    lengths: "array[int]",
    joined: bytes,
    sizes: "array[int]",
    ends: bytes,
    ints: "array[int]",
    floats: "array[float]",
    config: tuple[int, int, int],
    calibration: tuple[Any, ...],
) -> tuple[Any, ...]:  # see _Many
    """`_whole` for each stream in turn, reading its stored fields from the joined ones
    (`_joined` says how they come), collecting the results for one hand-back."""
    warmup, window, days = config
    quantile, floors, priors, refractory, refractory_seconds, threshold = calibration
    total = len(values)
    streams = len(lengths)
    tables = np.frombuffer(joined, dtype=np.uint8)
    offsets = _offsets(sizes, ends)
    points = np.empty((_POINT_ROWS, total))
    flags = np.empty((2, total), dtype=np.bool_)
    anomalies = np.empty(total, dtype=np.intp)
    packed = np.empty(1024 + 2 * len(tables) + streams * _CALIBRATION_BYTES, dtype=np.uint8)
    packed_ends = np.empty((streams, _TABLE_COUNT), dtype=np.uint32)
    out_ints = np.empty((streams, 9), dtype=np.int64)
    out_floats = np.empty((streams, 2))
    start = found = used = 0
    for k in range(streams):
        end = start + lengths[k]
        i0, f0 = k * _INT_FIELDS, k * _FLOAT_FIELDS
        hist, refs = whole_calibration(
            _read_table(tables, offsets, k, _HIST),
            _read_table(tables, offsets, k, _REFS),
            quantile,
            floors,
            priors,
        )
        before = (
            values[start:end],
            ts[start:end],
            True,
            ints[i0],
            warmup,
            window,
            days,
            _read(tables, offsets, k, 0),
            ints[i0 + 1],
            ints[i0 + 2],
            floats[f0],
            _read(tables, offsets, k, 1),
            floats[f0 + 1],
            _read(tables, offsets, k, 2),
            _read(tables, offsets, k, 3),
            _read(tables, offsets, k, 4),
            _read(tables, offsets, k, 5),
            ints[i0 + 3],
            ints[i0 + 4],
            floats[f0 + 2],
            _read(tables, offsets, k, 6),
            _read(tables, offsets, k, 7),
            _read(tables, offsets, k, 8),
            _read(tables, offsets, k, 9),
            ints[i0 + 5],
            _read(tables, offsets, k, 10),
            _read(tables, offsets, k, 11),
            _read(tables, offsets, k, 12),
            ints[i0 + 6],
            ints[i0 + 7],
            _read(tables, offsets, k, 13),
            _read(tables, offsets, k, 14),
            _read(tables, offsets, k, 15),
        )
        after = (
            ints[i0],
            hist,
            refs,
            floats[f0 + 3],
            quantile,
            floors,
            priors,
            _read(tables, offsets, k, 17),
            _read(tables, offsets, k, 18),
            _read(tables, offsets, k, 19),
            refractory,
            refractory_seconds,
            threshold,
        )
        f, b, model, _ = _whole(before, _read(tables, offsets, k, 16), after)
        _put(points[_SCORE], start, b[3])
        _put(points[_LOWER], start, b[4])
        _put(points[_UPPER], start, b[5])
        _put(points[_ENVELOPE_LO], start, f[6])
        _put(points[_ENVELOPE_HI], start, f[7])
        for i in range(len(DETECTORS)):
            _put(points[_SURPRISE + i], start, b[0][i])
        for i in range(ROWS):
            _put(points[_ROBUST + i], start, f[5][i])
        _put(flags[0], start, f[3])
        _put(flags[1], start, f[4])
        for j in b[9]:
            anomalies[found] = j
            found += 1
        stream_start = used
        for i, part in enumerate(
            (
                _raw_bytes(f[8]),
                _raw_bytes(f[25]),
                _raw_bytes(f[26]),
                _raw_bytes(f[27]),
                _raw_bytes(f[30]),
                _raw_bytes(f[31]),
                _raw_bytes(f[32]),
                _raw_bytes(b[1]),
                _raw_bytes(b[2]),
                _raw_bytes(b[6]),
                _raw_bytes(b[7]),
                _raw_bytes(b[8]),
                _raw_bytes(model),
                _raw_bytes(f[11]),
                _raw_bytes(f[13]),
                _raw_bytes(f[14]),
                _raw_bytes(f[15]),
                _raw_bytes(f[16]),
                _raw_bytes(f[20]),
                _raw_bytes(f[21]),
                _raw_bytes(f[22]),
                _raw_bytes(f[23]),
            )
        ):
            if used + len(part) > len(packed):
                grown = np.empty(2 * len(packed) + len(part), dtype=np.uint8)
                _put(grown, 0, packed[:used])
                packed = grown
            _put(packed, used, part)
            used += len(part)
            packed_ends[k, i] = used - stream_start
        out_ints[k, 0], out_ints[k, 1] = found, used
        out_ints[k, 2], out_ints[k, 3] = f[9], f[10]
        out_ints[k, 4], out_ints[k, 5], out_ints[k, 6] = f[17], f[18], f[24]
        out_ints[k, 7], out_ints[k, 8] = f[28], f[29]
        out_floats[k, 0], out_floats[k, 1] = f[12], f[19]
        start = end
    return points, flags, anomalies[:found], packed[:used], packed_ends, out_ints, out_floats


@jit_holding_gil
def _many_holding_gil(
    values: FloatArray,
    ts: FloatArray,
    lengths: "array[int]",
    joined: bytes,
    sizes: "array[int]",
    ends: bytes,
    ints: "array[int]",
    floats: "array[float]",
    config: tuple[int, int, int],
    calibration: tuple[Any, ...],
) -> tuple[Any, ...]:
    """`_many` for the main thread (see `_whole_holding_gil`)."""
    return _many(values, ts, lengths, joined, sizes, ends, ints, floats, config, calibration)


@jit
def _read(tables: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64], k: int, i: int) -> Any:
    """Stream k's `_JOINED[i]` table."""
    return _read_table(tables, offsets, k, _READ[i])


@jit
def _read_table(
    tables: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64], k: int, table: int
) -> Any:
    """Stream k's table `TABLES[table]`."""
    return tables[offsets[k, table] : offsets[k, table + 1]]


_HIST, _REFS = TABLES.index("hist"), TABLES.index("refs")
_CALIBRATION_BYTES = (4 * BINS + 8) * len(DETECTORS)
"""A whole histogram and its references: what a state without them gains in a call."""
_TABLE_COUNT = len(TABLES)


@jit
def _offsets(sizes: "array[int]", ends: bytes) -> npt.NDArray[np.int64]:
    """Where each stream's tables start and each ends in the joined ones ([stream, 1 +
    table]), from the states' sizes and their own ends."""
    own = np.frombuffer(ends, dtype=np.uint32)
    offsets = np.empty((len(sizes), 1 + _TABLE_COUNT), dtype=np.int64)
    start = 0
    for k in range(len(sizes)):
        offsets[k, 0] = start
        for i in range(_TABLE_COUNT):
            offsets[k, 1 + i] = start + own[k * _TABLE_COUNT + i]
        start += sizes[k]
    return offsets


@jit
def _raw_bytes(a: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """An array's bytes in C order, as `ndarray.tobytes` has them."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


@jit
def _put(into: npt.NDArray[Any], at: int, part: npt.NDArray[Any]) -> None:
    """into[at : at + len(part)] = part, as a loop the compiler vectorises (the slice
    assignment copied a byte at a time: 10 µs for a state's 26 kB, against 0.7)."""
    window = into[at : at + len(part)]
    for i in range(len(part)):
        window[i] = part[i]


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
    states, batches = [state, DetectorState()], [(values[:2], ts[-2:] + 600.0)] * 2
    detector.detect_many(states, batches, [0.5, 0.5])
    # And the calls the detection threads make.
    for target, args in (
        (detector.detect, (state, values[:1], ts[-1:] + 300.0)),
        (detector.detect_many, (states, batches, [0.5, 0.5])),
    ):
        thread = threading.Thread(target=target, args=args)
        thread.start()
        thread.join()


@jit
def _nans(n: int) -> FloatArray:
    a = np.empty(n)
    a.fill(np.nan)
    return a


def _kind(
    j: int,
    votes: FloatArray,
    values: FloatArray,
    rows: FloatArray,
    missing: BoolArray,
    flat: BoolArray,
) -> AnomalyKind:
    """What happened, from which detector is the most surprised and how the point got there
    (`rows`: the robust rows, see `robust.LEVEL` ...)."""
    if missing[j]:
        return AnomalyKind.MISSING_DATA
    if flat[j]:
        return AnomalyKind.FLATLINE
    top = int(np.argmax(votes))
    if top == VOLATILITY:
        return AnomalyKind.VARIANCE_CHANGE
    sustained = rows[robust.BUILT, j] >= SUSTAINED
    if top in (CHANGE, DRIFT):
        # The CUSUM or the level drift leads: a shift that no single point made unusual is a
        # trend change.
        level_shift = rows[robust.LEVEL, j] >= SUSTAINED
        return AnomalyKind.LEVEL_SHIFT if level_shift else AnomalyKind.TREND_CHANGE
    if sustained:
        return AnomalyKind.LEVEL_SHIFT
    median = rows[robust.MEDIAN, j]
    above = not np.isfinite(median) or values[j] >= median
    return AnomalyKind.SPIKE if above else AnomalyKind.DIP
