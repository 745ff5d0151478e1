"""Calibration: each detector's raw score measured against the stream's own history of it.

A detector's surprise at a point is `log10(raw / ref)` (0 below ref), ref being the configured
quantile (by default the 99.9th percentile) of that detector's raw scores on this stream, so a
noisy stream and a quiet one, or a spiky detector and a smooth one, are on one scale and one
threshold fits them all.

The history is a histogram of log2(raw) in quarter-octave bins with integer counts, halved
when it grows past 2 × MEMORY points (an exponential forgetting that is exact in integers).
The references are re-estimated every EPOCH points, at absolute stream positions, so every
point is measured against the same references however the stream was batched. Until a
detector has MIN_HISTORY raw scores, its reference is at least a conservative prior.
"""

import math

import numpy as np
import numpy.typing as npt

from driftlock.detect.jit import jit
from driftlock.detect.rolling import FloatArray
from driftlock.detect.state import DetectorState

BINS_PER_OCTAVE = 4
LOWEST_OCTAVE = -8
HIGHEST_OCTAVE = 16
BINS = (HIGHEST_OCTAVE - LOWEST_OCTAVE) * BINS_PER_OCTAVE + 1
"""Bin 0 holds raw scores below 2^LOWEST_OCTAVE, zero included."""
EPOCH = 128
MEMORY = 4096
MIN_HISTORY = 256
MIN_TAIL = 3.0
"""The reference is never above the MIN_TAIL-th largest raw score: in a young stream, the
99.9th percentile would be its largest score so far, and two spikes would teach it that
spikes are normal."""
TOP_BIN = HIGHEST_OCTAVE - 1.0 / BINS_PER_OCTAVE
"""A reference in the top bin is the ceiling itself: a capped raw score, all that a stream
that often scores beyond the ceiling shows, is then never surprising."""
CEILING = float(2**HIGHEST_OCTAVE)
"""Raw scores are capped here: beyond it, all that matters is that it is very large."""


class Calibrator:
    """References for F detectors; `floors` and `priors` are per detector, in raw units."""

    def __init__(self, quantile: float, floors: FloatArray, priors: FloatArray) -> None:
        self.quantile = quantile
        self.floors, self.priors = floors, priors
        self.detectors = len(floors)
        self.hist_bytes, self.refs_bytes = 4 * self.detectors * BINS, 8 * self.detectors
        """The sizes of a whole histogram and its references."""
        self._fresh: tuple[bytes, bytes] | None = None

    def stored(self, state: DetectorState) -> tuple[bytes, bytes]:
        """The state's histogram and references as `stored_surprise` reads them: the stored
        bytes themselves in the usual case, every row stored; otherwise completed."""
        hist, refs = state.hist, state.refs
        if len(hist) == self.hist_bytes and len(refs) == self.refs_bytes:
            return hist, refs
        if not hist and not refs:
            # A new stream's, the same for all: completing them anew took 7.7% of a node
            # process's time with the GIL while every message was a new stream.
            if self._fresh is None:
                self._fresh = self._completed(state)
            return self._fresh
        return self._completed(state)

    def _completed(self, state: DetectorState) -> tuple[bytes, bytes]:
        hist, refs = whole_calibration(
            np.frombuffer(state.hist, dtype=np.uint8),
            np.frombuffer(state.refs, dtype=np.uint8),
            self.quantile,
            self.floors,
            self.priors,
        )
        return hist.tobytes(), refs.tobytes()


@jit
def whole_calibration(
    stored_hist: npt.NDArray[np.uint8],
    stored_refs: npt.NDArray[np.uint8],
    quantile: float,
    floors: FloatArray,
    priors: FloatArray,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """A stored histogram and references as `stored_surprise` reads them, as new arrays: the
    stored ones when whole, as they nearly always are; else completed. A new stream's are
    empty; a state from before a detector was added holds the others' rows (a prefix), and
    the new one starts with an empty history and its prior."""
    size = len(floors) * BINS
    if len(stored_hist) == 4 * size and len(stored_refs) == 8 * len(floors):
        return stored_hist.copy(), stored_refs.copy()
    hist = np.zeros(size, dtype=np.int32)
    known = np.frombuffer(stored_hist, dtype=np.int32)[:size]
    hist[: len(known)] = known
    refs = _references(hist, quantile, floors, priors)
    if len(known):
        old = np.frombuffer(stored_refs, dtype=np.float64)[: len(refs)]
        refs[: len(old)] = old
    return hist.view(np.uint8), refs.view(np.uint8)


@jit
def stored_surprise(
    raw: FloatArray,
    scored: npt.NDArray[np.bool_],
    count: int,
    stored_hist: bytes,
    stored_refs: bytes,
    shift: float,
    quantile: float,
    floors: FloatArray,
    priors: FloatArray,
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int32], FloatArray]:
    """Surprise [detector, point] for a batch of raw scores [detector, point] (NaN where a
    detector has nothing to say, e.g. the seasonal profile before its first day), and the
    reference each point was measured against; `scored` marks the points past the warm-up.
    Only scored points a detector had a say on are learned from; `shift` lowers every
    reference by that many octaves (the sensitivity). Reads writable copies of the stored
    histogram and references (see `Calibrator.stored`) and returns them updated, to store."""
    hist = np.frombuffer(stored_hist, dtype=np.int32).copy()
    refs = np.frombuffer(stored_refs, dtype=np.float64).copy()
    surprise, at = _surprise(raw, scored, count, hist, refs, shift, quantile, floors, priors)
    return surprise, at, hist, refs


@jit
def _surprise(
    raw: FloatArray,
    scored: npt.NDArray[np.bool_],
    count: int,
    hist: npt.NDArray[np.int32],
    refs: FloatArray,
    shift: float,
    quantile: float,
    floors: FloatArray,
    priors: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Point by point: score against the references, then learn; at every EPOCH boundary of
    the stream position, new references. Updates `hist` and `refs` in place."""
    f, n = raw.shape
    surprise = np.zeros((f, n))
    at = np.empty((f, n))
    ref_octaves = np.log2(refs)
    ref_values = np.exp2(ref_octaves)
    log10_2 = np.log10(2.0)
    for j in range(n):
        if j and (count + j) % EPOCH == 0:
            _refresh(hist, refs, quantile, floors, priors)
            ref_octaves = np.log2(refs)
            ref_values = np.exp2(ref_octaves)
        for i in range(f):
            ceiling = ref_octaves[i] >= TOP_BIN
            at[i, j] = CEILING if ceiling else ref_values[i]
            x = raw[i, j]
            if not scored[j] or math.isnan(x):
                continue
            octave = np.log2(min(x, CEILING))
            if not ceiling:
                surprise[i, j] = max(0.0, octave - ref_octaves[i] + shift) * log10_2
            b = math.floor((octave - LOWEST_OCTAVE) * BINS_PER_OCTAVE)
            b = min(max(b + 1, 0), BINS - 1) if math.isfinite(b) else 0
            hist[i * BINS + int(b)] += 1
    if (count + n) % EPOCH == 0:
        _refresh(hist, refs, quantile, floors, priors)
    return surprise, at


@jit
def _refresh(
    hist: npt.NDArray[np.int32],
    refs: FloatArray,
    quantile: float,
    floors: FloatArray,
    priors: FloatArray,
) -> None:
    """Forget half of a full history, then new references (in place)."""
    if hist.sum() >= 2 * MEMORY * len(refs):
        hist //= 2
    refs[:] = _references(hist, quantile, floors, priors)


@jit
def _references(
    flat: npt.NDArray[np.int32], quantile: float, floors: FloatArray, priors: FloatArray
) -> FloatArray:
    """The configured quantile of each detector's histogram, interpolated inside its bin
    on the log scale, and never below the detector's floor (prior while young)."""
    f = len(floors)
    refs = np.empty(f)
    for i in range(f):
        hist = flat[i * BINS : (i + 1) * BINS]
        total = 0
        for c in hist:
            total += c
        k = max((1.0 - quantile) * total, MIN_TAIL)
        # The bin holding the quantile, counting from the top: points in it or higher >= k.
        from_top, first = 0, 0
        for first in range(BINS):
            from_top += hist[BINS - 1 - first]
            if from_top >= k:
                break
        else:
            first = 0
            from_top = hist[BINS - 1]
        count = max(hist[BINS - 1 - first], 1)
        within = (k - from_top + count) / count  # from the bin's top edge
        octave = HIGHEST_OCTAVE - (first + within) / BINS_PER_OCTAVE
        empirical = np.exp2(octave) if first < BINS - 1 and total > 0 else 0.0
        refs[i] = max(empirical, floors[i] if total >= MIN_HISTORY else priors[i])
    return refs
