"""The Numenta Anomaly Benchmark scoring rules, exactly as written in ../shared/nab/README.md.

A file is scored from its per-row anomaly scores and its anomaly windows as row ranges:

- the first `min(floor(0.15 N), 750)` rows are a probationary period: detections there count
  for nothing (a window is still missed if its only detections are there);
- a detection inside a window earns `A_TP · σ(y) / σ(-1)` with `y = -(right - i + 1) / width`,
  and only the window's first detection counts; a window without one costs `-A_FN`;
- a detection outside every window costs `A_FP · σ(y)`, `y = |i - prevRight| / (prevWidth - 1)`
  after a window, and `-A_FP` before any window;
- one threshold per profile for the whole corpus: every distinct score value is tried (and
  "never detect", a threshold above 1), and the best summed raw score wins;
- `100 · (S - S_null) / (S_perfect - S_null)` normalises the summed score.
"""

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

NEVER = 1.1
"""A threshold above every score in [0, 1]: the detector never fires."""
PROBATION_FRACTION = 0.15
PROBATION_MAX_ROWS = 750


@dataclass(frozen=True)
class Profile:
    name: str
    a_tp: float
    a_fp: float
    a_fn: float


PROFILES = (
    Profile("standard", 1.0, 0.11, 1.0),
    Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    Profile("reward_low_FN_rate", 1.0, 0.11, 2.0),
)


@dataclass(frozen=True)
class ScoredFile:
    """One data file: its per-row scores and its windows as inclusive row index ranges."""

    name: str
    scores: FloatArray
    windows: tuple[tuple[int, int], ...]

    @property
    def category(self) -> str:
        return self.name.split("/", 1)[0]


@dataclass(frozen=True)
class Outcome:
    """What a threshold gives on a set of files under one profile."""

    raw: float
    windows: int
    true_positives: int
    false_positives: int
    false_negatives: int

    def normalised(self, profile: Profile) -> float:
        return normalise(self.raw, self.windows, profile)


def scaled_sigmoid(y: float | FloatArray) -> FloatArray:
    """`2 / (1 + exp(5 y)) - 1`, and -1 for y > 3."""
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore"):
        s = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y > 3.0, -1.0, s)


MAX_TP = float(scaled_sigmoid(-1.0))
"""σ(-1) ≈ 0.98661: what a detection at a window's first row is worth before scaling."""


def probation_length(rows: int) -> int:
    return min(math.floor(PROBATION_FRACTION * rows), PROBATION_MAX_ROWS)


def load_windows(path: Path) -> dict[str, list[tuple[str, str]]]:
    raw: dict[str, list[list[str]]] = json.loads(path.read_text())
    return {name: [(w[0], w[1]) for w in windows] for name, windows in raw.items()}


def window_rows(
    timestamps: npt.NDArray[np.datetime64], windows: Iterable[tuple[str, str]]
) -> tuple[tuple[int, int], ...]:
    """Windows as inclusive row ranges: from the row whose timestamp is the window's start to
    the first row whose timestamp is its end (as NAB matches them). A bound that is no row's
    timestamp falls back to the first row at or after the start, the last at or before the end."""
    ts = timestamps.astype("datetime64[us]")
    rows = []
    for start, end in windows:
        lo, hi = np.datetime64(start, "us"), np.datetime64(end, "us")
        exact = np.flatnonzero(ts == lo)
        left = int(exact[0]) if len(exact) else _first(np.flatnonzero(ts >= lo))
        exact = np.flatnonzero(ts == hi)
        right = int(exact[0]) if len(exact) else _last(np.flatnonzero(ts <= hi))
        if not 0 <= left <= right:
            raise ValueError(f"window {start} .. {end} holds no row")
        rows.append((left, right))
    return tuple(rows)


def _first(rows: IntArray) -> int:
    return int(rows[0]) if len(rows) else -1


def _last(rows: IntArray) -> int:
    return int(rows[-1]) if len(rows) else -1


def row_weights(rows: int, windows: Sequence[tuple[int, int]]) -> tuple[IntArray, FloatArray]:
    """For every row: the index of the window holding it (-1 outside windows), and the unit
    weight of a detection there: `σ(y)/σ(-1)` inside a window (the A_TP multiple earned), or
    `σ(y)` / -1 outside (the A_FP multiple earned, negative)."""
    window_of = np.full(rows, -1, dtype=np.intp)
    weight = np.full(rows, -1.0)
    index = np.arange(rows)
    previous_right = -1
    for w, (left, right) in enumerate(windows):
        if left <= previous_right or right < left:
            raise ValueError("windows must be in time order and must not overlap")
        width = right - left + 1
        window_of[left : right + 1] = w
        weight[left : right + 1] = scaled_sigmoid(-(right - index[left : right + 1] + 1) / width)
        weight[left : right + 1] /= MAX_TP
        # Rows after this window up to the next one: false positives, forgiven a little
        # close to it. A one-row window forgives nothing.
        stop = windows[w + 1][0] if w + 1 < len(windows) else rows
        gap = index[right + 1 : stop]
        if width > 1:
            weight[right + 1 : stop] = scaled_sigmoid(np.abs(gap - right) / (width - 1))
        previous_right = right
    return window_of, weight


def score_file(f: ScoredFile, threshold: float, profile: Profile) -> Outcome:
    """The raw score of one file at one threshold, straight from the rules."""
    n = len(f.scores)
    window_of, weight = row_weights(n, f.windows)
    probation = probation_length(n)
    raw, tp, fp = 0.0, 0, 0
    detected: set[int] = set()
    for i in np.flatnonzero(f.scores >= threshold):
        if i < probation:
            continue
        w = int(window_of[i])
        if w < 0:
            raw += profile.a_fp * float(weight[i])
            fp += 1
        elif w not in detected:
            detected.add(w)
            raw += profile.a_tp * float(weight[i])
            tp += 1
    fn = len(f.windows) - tp
    raw -= profile.a_fn * fn
    return Outcome(raw, len(f.windows), tp, fp, fn)


def score_files(files: Iterable[ScoredFile], threshold: float, profile: Profile) -> Outcome:
    outcomes = [score_file(f, threshold, profile) for f in files]
    return Outcome(
        sum(o.raw for o in outcomes),
        sum(o.windows for o in outcomes),
        sum(o.true_positives for o in outcomes),
        sum(o.false_positives for o in outcomes),
        sum(o.false_negatives for o in outcomes),
    )


def normalise(raw: float, windows: int, profile: Profile) -> float:
    """`100 (S - S_null) / (S_perfect - S_null)`; NaN for a set of files without windows."""
    perfect, null = profile.a_tp * windows, -profile.a_fn * windows
    if perfect == null:
        return math.nan
    return 100.0 * (raw - null) / (perfect - null)


def best_threshold(files: Sequence[ScoredFile], profile: Profile) -> tuple[float, float]:
    """The threshold with the highest summed raw score over all files, and that score.

    Thresholds are swept from the highest distinct score down; lowering the threshold past a
    score value detects every row with that value at once. Ties keep the higher threshold."""
    scores, window_ids, weights = [], [], []
    windows = 0
    for f in files:
        n = len(f.scores)
        window_of, weight = row_weights(n, f.windows)
        keep = slice(probation_length(n), n)
        scores.append(f.scores[keep])
        window_ids.append(np.where(window_of[keep] >= 0, window_of[keep] + windows, -1))
        weights.append(weight[keep])
        windows += len(f.windows)
    null = -profile.a_fn * windows
    if not scores:
        return NEVER, null
    score = np.concatenate(scores)
    window_id = np.concatenate(window_ids)
    weight = np.concatenate(weights)
    order = np.argsort(-score, kind="stable")
    score, window_id, weight = score[order], window_id[order], weight[order]

    # What each detection adds to the total when the threshold falls to its score.
    delta = np.where(window_id < 0, profile.a_fp * weight, 0.0)
    in_window = np.flatnonzero(window_id >= 0)
    ids = window_id[in_window]
    by_window = np.argsort(ids, kind="stable")  # keeps the descending-score order per window
    for w_rows in np.split(in_window[by_window], np.flatnonzero(np.diff(ids[by_window])) + 1):
        if not len(w_rows):
            continue
        # A window earns its best (earliest) detection so far, or -A_FN before any.
        best = np.maximum.accumulate(profile.a_tp * weight[w_rows])
        delta[w_rows] = np.diff(best, prepend=-profile.a_fn)
    total = null + np.cumsum(delta)
    # Only thresholds equal to a score value: the last row of each group of equal scores.
    ends = np.append(np.flatnonzero(np.diff(score)), len(score) - 1)
    candidates = total[ends]
    k = int(np.argmax(candidates))
    if candidates[k] <= null:
        return NEVER, null
    return float(score[ends[k]]), float(candidates[k])


def by_category(files: Iterable[ScoredFile]) -> Mapping[str, list[ScoredFile]]:
    groups: dict[str, list[ScoredFile]] = {}
    for f in files:
        groups.setdefault(f.category, []).append(f)
    return dict(sorted(groups.items()))
