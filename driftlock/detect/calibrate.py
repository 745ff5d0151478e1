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

import numpy as np
import numpy.typing as npt

from driftlock.detect.rolling import FloatArray
from driftlock.detect.state import DetectorState, floats

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

    def surprise(
        self,
        state: DetectorState,
        raw: FloatArray,
        scored: npt.NDArray[np.bool_],
        shift: float = 0.0,
    ) -> tuple[FloatArray, FloatArray, bytes, bytes]:
        """Surprise [detector, point] for a batch of raw scores [detector, point] (NaN where a
        detector has nothing to say, e.g. the seasonal profile before its first day), and the
        reference each point was measured against; `scored` marks the points past the warm-up.
        Only scored points a detector had a say on are learned from; `shift` lowers every
        reference by that many octaves (the sensitivity). Also returns the histogram and
        references to store."""
        f, n = raw.shape
        with np.errstate(divide="ignore"):
            octaves = np.log2(np.minimum(raw, CEILING))
        bins = np.floor((octaves - LOWEST_OCTAVE) * BINS_PER_OCTAVE)
        bins = np.clip(np.where(np.isfinite(bins), bins + 1, 0), 0, BINS - 1).astype(np.intp)
        bins += np.arange(0, f * BINS, BINS)[:, None]
        learn = scored & ~np.isnan(raw)
        if state.hist:
            hist = np.frombuffer(state.hist, dtype=np.int32).copy()
            refs = floats(state.refs)
        else:
            hist = np.zeros(f * BINS, dtype=np.int32)
            refs = self._references(hist)
        ref_octaves = np.empty((f, n))
        # Segments end where the stream position reaches a multiple of EPOCH.
        first = (-state.count) % EPOCH or EPOCH
        a = 0
        for b in [*range(first, n, EPOCH), n]:
            ref_octaves[:, a:b] = np.log2(refs)[:, None]
            keep = bins[:, a:b][learn[:, a:b]]
            if keep.size:
                hist += np.bincount(keep.ravel(), minlength=f * BINS).astype(np.int32)
            if b < n or (state.count + n) % EPOCH == 0:
                if hist.sum() >= 2 * MEMORY * f:
                    hist //= 2
                refs = self._references(hist)
            a = b
        ceiling = ref_octaves >= TOP_BIN
        ref_octaves[ceiling] = HIGHEST_OCTAVE
        surprise = np.maximum(0.0, octaves - ref_octaves + shift) * np.log10(2.0)
        surprise[ceiling] = 0.0
        surprise[~learn] = 0.0
        return surprise, np.exp2(ref_octaves), hist.tobytes(), refs.tobytes()

    def _references(self, flat: npt.NDArray[np.int32]) -> FloatArray:
        """The configured quantile of each detector's histogram, interpolated inside its bin
        on the log scale, and never below the detector's floor (prior while young)."""
        hist = flat.reshape(self.detectors, BINS)
        from_top = hist[:, ::-1].cumsum(axis=1)  # points in this bin or higher, top bin first
        total = from_top[:, -1]
        k = np.maximum((1.0 - self.quantile) * total, MIN_TAIL)
        first = (from_top >= k[:, None]).argmax(axis=1)  # the bin holding the quantile
        rows = np.arange(self.detectors)
        count = np.maximum(hist[rows, BINS - 1 - first], 1)
        within = (k - from_top[rows, first] + count) / count  # from the bin's top edge
        octave = HIGHEST_OCTAVE - (first + within) / BINS_PER_OCTAVE
        empirical = np.where((first < BINS - 1) & (total > 0), np.exp2(octave), 0.0)
        return np.maximum(empirical, np.where(total >= MIN_HISTORY, self.floors, self.priors))
