"""The NAB scorer on hand-made cases, every expected value worked out by hand in a comment.

Handy identity: σ(y) = 2 / (1 + exp(5y)) - 1 = -tanh(5y / 2), so σ(-1) = tanh(2.5) = 0.986614.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench.nab import QUICK_FILES
from bench.nab_score import (
    MAX_TP,
    NEVER,
    PROFILES,
    FloatArray,
    Profile,
    ScoredFile,
    best_threshold,
    normalise,
    probation_length,
    scaled_sigmoid,
    score_file,
    score_files,
    window_rows,
)
from tests.processes import ROOT, run_bench

STANDARD, LOW_FP, LOW_FN = PROFILES


def detections(n: int, rows: list[int], score: float = 1.0) -> FloatArray:
    x = np.zeros(n)
    x[rows] = score
    return x


def raw(
    n: int, rows: list[int], windows: tuple[tuple[int, int], ...], profile: Profile = STANDARD
) -> float:
    f = ScoredFile("c/f.csv", detections(n, rows), windows)
    return score_file(f, 0.5, profile).raw


# -- the pieces --


def test_scaled_sigmoid() -> None:
    assert float(scaled_sigmoid(0.0)) == 0.0
    assert pytest.approx(0.9866142981514303) == MAX_TP  # tanh(2.5)
    assert float(scaled_sigmoid(1.0)) == pytest.approx(-0.9866142981514303)
    assert float(scaled_sigmoid(3.0)) == pytest.approx(-0.9999993881955461)  # -tanh(7.5)
    assert float(scaled_sigmoid(3.0001)) == -1.0  # y > 3: exactly -1
    assert float(scaled_sigmoid(math.inf)) == -1.0


@pytest.mark.parametrize(
    ("rows", "expected"),
    [(6, 0), (20, 3), (4032, 604), (5000, 750), (5007, 750), (22695, 750)],
)
def test_probation_length(rows: int, expected: int) -> None:
    # min(floor(0.15 N), 750): 0.15·20 = 3, 0.15·4032 = 604.8, 0.15·5000 = 750, 0.15·5007 = 751.05
    assert probation_length(rows) == expected


def test_windows_become_row_ranges() -> None:
    ts = np.array([f"2014-04-01 00:{m:02d}:00" for m in range(0, 60, 5)], dtype="datetime64[us]")
    # Exact bounds: rows 2 (00:10) to 4 (00:20). Bounds between rows: first row at or after
    # 00:31 is row 7 (00:35), last row at or before 00:44 is row 8 (00:40).
    windows = [
        ("2014-04-01 00:10:00.000000", "2014-04-01 00:20:00.000000"),
        ("2014-04-01 00:31:00", "2014-04-01 00:44:00"),
    ]
    assert window_rows(ts, windows) == ((2, 4), (7, 8))
    with pytest.raises(ValueError, match="holds no row"):
        window_rows(ts, [("2014-04-01 00:11:00", "2014-04-01 00:14:00")])


# -- one file at a time (N = 20 rows: probation = 3 rows, 0..2) --

WINDOW = ((8, 11),)  # rows 8..11: width 4


def test_detection_at_a_windows_first_row_earns_full_a_tp() -> None:
    # y = -(11 - 8 + 1) / 4 = -1: A_TP · σ(-1) / σ(-1) = 1.0. Later detections in the same
    # window (rows 9, 10) earn nothing and cost nothing.
    assert raw(20, [8], WINDOW) == pytest.approx(1.0)
    assert raw(20, [8, 9, 10], WINDOW) == pytest.approx(1.0)
    assert raw(20, [8, 9, 10], WINDOW, LOW_FP) == pytest.approx(1.0)


def test_detection_at_a_windows_last_row() -> None:
    # y = -(11 - 11 + 1) / 4 = -0.25: σ = tanh(0.625) = 0.554600, / 0.986614 = 0.562124.
    assert raw(20, [11], WINDOW) == pytest.approx(0.5621241486044829)
    # In a wide window the last row is worth about 0: width 200, y = -1/200,
    # σ = tanh(0.0125) = 0.0124994, / 0.986614 = 0.012669.
    assert raw(300, [249], ((50, 249),)) == pytest.approx(0.0126689, abs=1e-6)


def test_only_the_first_detection_in_a_window_counts() -> None:
    # Rows 9 and 11: the first is row 9, y = -3/4: tanh(1.875) / tanh(2.5) = 0.966989.
    assert raw(20, [9, 11], WINDOW) == pytest.approx(0.9669890878000608)


def test_missed_window_costs_a_fn() -> None:
    assert raw(20, [], WINDOW) == -1.0
    assert raw(20, [], WINDOW, LOW_FN) == -2.0


def test_false_positive_before_any_window() -> None:
    # Row 5 is after the probation (rows 0..2) and before the window: -A_FP; the window is
    # missed: -A_FN. Standard: -0.11 - 1 = -1.11; low FP: -0.22 - 1 = -1.22.
    assert raw(20, [5], WINDOW) == pytest.approx(-1.11)
    assert raw(20, [5], WINDOW, LOW_FP) == pytest.approx(-1.22)
    assert raw(20, [5], WINDOW, LOW_FN) == pytest.approx(-2.11)


def test_false_positive_after_a_window() -> None:
    # Row 8 detects the window (+1.0). Row 13: y = |13 - 11| / (4 - 1) = 2/3,
    # σ = -tanh(5/3) = -0.931110, · 0.11 = -0.102422: total 0.897578.
    assert raw(20, [8, 13], WINDOW) == pytest.approx(0.8975779430465665)
    # Row 12, just after: y = 1/3, σ = -tanh(5/6) = -0.682262, · 0.11 = -0.075049.
    assert raw(20, [8, 12], WINDOW) == pytest.approx(1 - 0.11 * 0.6822617902381698)
    # Far after: N = 40, row 30, y = 19/3 > 3 so σ = -1 exactly: 1 - 0.11 = 0.89.
    assert raw(40, [8, 30], WINDOW) == pytest.approx(0.89)
    # FP weighting follows the previous window even when that window was missed:
    # -1 (missed) - 0.102422 (row 13).
    assert raw(20, [13], WINDOW) == pytest.approx(-1.0 - 0.10242205695343354)


def test_false_positive_between_two_windows_follows_the_previous_one() -> None:
    # Windows rows 8..11 (width 4) and 20..29 (width 10), N = 40 (probation 6). Row 14:
    # y = 3/3 = 1, σ = -tanh(2.5) = -0.986614, · 0.11 = -0.108528. Row 31: after the
    # second window, y = 2/9, σ = -tanh(5/9) = -0.504672, · 0.11 = -0.055514.
    # Both windows missed: -2.
    windows = ((8, 11), (20, 29))
    expected = -2 - 0.11 * math.tanh(2.5) - 0.11 * math.tanh(5 / 9)
    assert raw(40, [14, 31], windows) == pytest.approx(expected)
    assert expected == pytest.approx(-2.1640423, abs=1e-6)


def test_detections_in_the_probationary_period_count_for_nothing() -> None:
    # Rows 0..2 are probationary: a detection at row 1 costs nothing.
    assert raw(20, [1], WINDOW) == -1.0  # only the missed window
    # A window straddling the probation end, rows 1..5 (width 5): the detection at row 2
    # does not count and is not the window's first; the one at row 4 is:
    # y = -(5 - 4 + 1) / 5 = -0.4, tanh(1.0) / tanh(2.5) = 0.761594 / 0.986614 = 0.771927.
    assert raw(20, [2, 4], ((1, 5),)) == pytest.approx(0.7719269398210887)
    # Only a probationary detection: the window is missed.
    assert raw(20, [2], ((1, 5),)) == -1.0


def test_file_without_windows() -> None:
    # Every detection after the probation costs -A_FP: rows 3 and 19, -0.22 standard, -0.44
    # low FP. Nothing to detect, nothing missed.
    f = ScoredFile("artificialNoAnomaly/f.csv", detections(20, [0, 3, 19]), ())
    assert score_file(f, 0.5, STANDARD).raw == pytest.approx(-0.22)
    assert score_file(f, 0.5, LOW_FP).raw == pytest.approx(-0.44)
    assert score_file(f, 0.5, STANDARD).false_positives == 2
    # Such files move the raw sum but not the normaliser; alone they have no normalised score.
    assert math.isnan(score_file(f, 0.5, STANDARD).normalised(STANDARD))
    # Its best threshold: never fire (0.0 beats any negative score).
    assert best_threshold([f], STANDARD) == (NEVER, 0.0)


def test_normalisation() -> None:
    # 2 windows, standard: S_null = -2, S_perfect = 2, score = 100 (S + 2) / 4.
    assert normalise(-2.0, 2, STANDARD) == 0.0
    assert normalise(2.0, 2, STANDARD) == 100.0
    assert normalise(0.89, 2, STANDARD) == pytest.approx(72.25)  # 100 · 2.89 / 4
    # Low FN: S_null = -4, S_perfect = 2: 100 (0.89 + 4) / 6 = 81.5.
    assert normalise(0.89, 2, LOW_FN) == pytest.approx(81.5)
    # A score below the null detector's is negative: 100 (-3 + 2) / 4 = -25.
    assert normalise(-3.0, 2, STANDARD) == -25.0
    assert math.isnan(normalise(-0.5, 0, STANDARD))


# -- the threshold sweep over a corpus --


def corpus() -> list[ScoredFile]:
    """A: N = 20, window rows 8..11: 0.9 at row 8 (TP 1.0), 0.6 at row 15 (after the
    window: y = 4/3, σ = -tanh(10/3) = -0.997458), 0.3 at row 4 (before it: -1).
    B: N = 20, no window: 0.95 at row 10, 0.6 at row 12 (-1 each).
    C: N = 40 (probation 6), window rows 30..33: 0.5 at row 31 (y = -3/4: TP 0.966989) and at
    the 20 rows 6..25 (before the window: -1 each)."""
    a = np.zeros(20)
    a[[8, 15, 4]] = [0.9, 0.6, 0.3]
    b = np.zeros(20)
    b[[10, 12]] = [0.95, 0.6]
    c = np.zeros(40)
    c[[31, *range(6, 26)]] = 0.5
    return [
        ScoredFile("x/a.csv", a, ((8, 11),)),
        ScoredFile("y/b.csv", b, ()),
        ScoredFile("x/c.csv", c, ((30, 33),)),
    ]


def test_threshold_choice_per_profile() -> None:
    files = corpus()
    # Standard, thresholds from the top (2 windows, null = -2):
    #   never: -2
    #   0.95:  -2 - 0.11                                   = -2.11
    #   0.9:   -2.11 + (1.0 + 1)                           = -0.11   <- best
    #   0.6:   -0.11 - 0.11·0.997458 - 0.11                = -0.329720
    #   0.5:   -0.329720 + (0.966989 + 1) - 20·0.11         = -0.562731
    #   0.3:   -0.562731 - 0.11                            = -0.672731
    #   0.0:   every other scored row fires as well: lower still.
    assert best_threshold(files, STANDARD) == pytest.approx((0.9, -0.11))
    total = score_files(files, 0.9, STANDARD)
    assert (total.true_positives, total.false_positives, total.false_negatives) == (1, 1, 1)
    assert total.normalised(STANDARD) == pytest.approx(100 * (-0.11 + 2) / 4)  # 47.25

    # Low FP: 0.9 gives -2 - 0.22 + 2 = -0.22; 0.5 adds -0.22·0.997458 - 0.22 + 1.966989 - 4.4.
    assert best_threshold(files, LOW_FP) == pytest.approx((0.9, -0.22))

    # Low FN (null = -4): 0.9 gives -4 - 0.11 + 3 = -1.11; 0.6 gives -1.11 - 0.219720
    # = -1.329720; 0.5 earns C's window, 0.966989 + 2, for 20 FPs (-2.2): -0.562731 <- best.
    threshold, best = best_threshold(files, LOW_FN)
    assert threshold == 0.5
    assert best == pytest.approx(-1.329720 + 2.966989 - 2.2, abs=1e-6)
    assert score_files(files, 0.5, LOW_FN).raw == pytest.approx(best)


def test_never_firing_wins_when_every_threshold_loses() -> None:
    # N = 200 (probation 30), window rows 100..103. Threshold 0.7: two FPs, -1 - 0.22;
    # threshold 0: the window (+2) for 70 FPs before it and 96 after: far below -1. Never fire.
    f = ScoredFile("x/a.csv", detections(200, [40, 50], 0.7), ((100, 103),))
    assert best_threshold([f], STANDARD) == (NEVER, -1.0)
    assert score_files([f], NEVER, STANDARD).normalised(STANDARD) == 0.0


def test_ties_keep_the_higher_threshold() -> None:
    # Row 8 at 0.8 (TP 1.0) then row 9 at 0.7: same window, nothing more: equal totals, 0.8 kept.
    f = ScoredFile("x/a.csv", np.array([0.0] * 8 + [0.8, 0.7] + [0.0] * 10), ((8, 11),))
    assert best_threshold([f], STANDARD) == (0.8, 1.0)


def test_equal_scores_fire_together() -> None:
    # Rows 8 and 15 share the score 0.9: a threshold of 0.9 detects both (1.0 - 0.109720).
    f = ScoredFile("x/a.csv", detections(20, [8, 15], 0.9), ((8, 11),))
    assert best_threshold([f], STANDARD) == pytest.approx((0.9, 1 - 0.10972037642212211))


@pytest.mark.parametrize("seed", range(5))
def test_sweep_equals_scoring_every_threshold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    files = []
    for k in range(4):
        n = int(rng.integers(30, 200))
        cuts = np.sort(rng.choice(np.arange(n // 5, n), size=4, replace=False))
        windows = ((int(cuts[0]), int(cuts[1])), (int(cuts[2]), int(cuts[3]))) if k else ()
        files.append(ScoredFile(f"c{k % 2}/f{k}.csv", np.round(rng.random(n) ** 8, 2), windows))
    for profile in PROFILES:
        candidates = [NEVER, *np.unique(np.concatenate([f.scores for f in files]))]
        totals = [score_files(files, float(t), profile).raw for t in candidates]
        threshold, best = best_threshold(files, profile)
        assert best == pytest.approx(max(totals))
        assert score_files(files, threshold, profile).raw == pytest.approx(best)


# -- the benchmark commands --

NAB = ROOT.parent / "shared" / "nab"


def test_nab_bench_quick_mode(tmp_path: Path) -> None:
    assert (NAB / "data").is_dir(), "the NAB corpus must be at ../shared/nab"
    out = run_bench("bench.nab", "--quick", "--out", str(tmp_path))
    assert "standard" in out and "reward_low_FP_rate" in out
    assert "artificialNoAnomaly" in out
    results = json.loads((ROOT / "bench" / "results" / "nab-quick.json").read_text())
    assert results["files"] == len(QUICK_FILES)
    for profile in PROFILES:
        assert -1000 < results[profile.name]["score"] <= 100
    # NAB layout: <out>/<detector>/<category>/<detector>_<file>.csv, rows as in the data file.
    detector = results["detector"]
    for name in QUICK_FILES:
        category, file = name.split("/")
        written = (tmp_path / detector / category / f"{detector}_{file}").read_text().splitlines()
        source = (NAB / "data" / name).read_text().splitlines()
        assert written[0] == "timestamp,value,anomaly_score,label"
        assert len(written) == len(source)
        assert [r.split(",")[0] for r in written[1:]] == [r.split(",")[0] for r in source[1:]]
        scores = [float(r.split(",")[2]) for r in written[1:]]
        assert all(0.0 <= s <= 1.0 for s in scores)


def test_detector_cost_bench_quick_mode() -> None:
    out = run_bench("bench.detect_cost", "--quick")
    assert "batches of 100" in out and "interleaved" in out
    results = json.loads((ROOT / "bench" / "results" / "detect_cost-quick.json").read_text())
    assert results["one_stream_batch_100"]["points_per_s"] > 0
    assert results["interleaved_1_point"]["points_per_s"] > 0
