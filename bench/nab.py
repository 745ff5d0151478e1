"""DriftLock's detector on the Numenta Anomaly Benchmark corpus.

    python -m bench.nab [--data DIR] [--windows FILE] [--out DIR] [--batch N] [--quick]

Runs every `DIR/<category>/<file>.csv` through the detector the actors run (same classes, same
defaults from `driftlock.settings.Settings`), feeding the points in time order in batches of
`--batch`, writes NAB-layout results (`<out>/<detector>/<category>/<detector>_<file>.csv`), and
prints the Standard / Reward-low-FP / Reward-low-FN scores of `bench.nab_score`, the chosen
thresholds, per-category scores and the false-positive rates. `--quick` runs three small files.
"""

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import print_table, write_results
from bench.nab_data import DataFile, corpus_files, read_file
from bench.nab_score import (
    NEVER,
    PROFILES,
    Outcome,
    Profile,
    ScoredFile,
    best_threshold,
    by_category,
    load_windows,
    probation_length,
    row_weights,
    score_files,
)
from driftlock.detect import Detector, DetectorState
from driftlock.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
NAB = ROOT.parent / "shared" / "nab"
QUICK_FILES = (
    "artificialNoAnomaly/art_daily_small_noise.csv",
    "realAdExchange/exchange-2_cpc_results.csv",
    "realTraffic/speed_7578.csv",
)
FloatArray = npt.NDArray[np.float64]


def detect_file(detector: Detector, f: DataFile, batch: int) -> FloatArray:
    """Per-row anomaly scores, the points fed in time order in batches as an actor gets them."""
    state = DetectorState()
    ts, values = f.epoch_seconds, f.values
    scores = []
    for start in range(0, len(values), batch):
        part = slice(start, start + batch)
        state, found = detector.detect(state, values[part], ts[part])
        scores.append(found.score)
    return np.concatenate(scores) if scores else np.empty(0)


def write_nab_results(out: Path, detector: str, f: DataFile, scored: ScoredFile) -> None:
    category, file = f.name.split("/", 1)
    path = out / detector / category / f"{detector}_{file}"
    path.parent.mkdir(parents=True, exist_ok=True)
    label = np.zeros(len(f.values), dtype=int)
    for left, right in f.windows:
        label[left : right + 1] = 1
    with path.open("w") as fh:
        fh.write("timestamp,value,anomaly_score,label\n")
        for stamp, value, score, lab in zip(f.stamps, f.values, scored.scores, label, strict=True):
            fh.write(f"{stamp},{float(value)!r},{float(score)!r},{lab}\n")


def false_positive_rates(files: list[ScoredFile], threshold: float) -> dict[str, Any]:
    """Detections outside windows after the probationary period, per scored row outside windows;
    and the same on artificialNoAnomaly alone."""
    outside = detections = no_anomaly_rows = no_anomaly_detections = 0
    for f in files:
        n = len(f.scores)
        window_of, _ = row_weights(n, f.windows)
        scored = np.arange(n) >= probation_length(n)
        rows = scored & (window_of < 0)
        hits = int(np.count_nonzero(rows & (f.scores >= threshold)))
        outside += int(np.count_nonzero(rows))
        detections += hits
        if f.category == "artificialNoAnomaly":
            no_anomaly_rows += int(np.count_nonzero(rows))
            no_anomaly_detections += hits
    return {
        "outside_windows": detections,
        "outside_windows_rate": detections / outside if outside else 0.0,
        "artificialNoAnomaly": no_anomaly_detections,
        "artificialNoAnomaly_rate": no_anomaly_detections / no_anomaly_rows
        if no_anomaly_rows
        else 0.0,
    }


def evaluate(files: list[ScoredFile], shipped: float) -> dict[str, Any]:
    """Per profile: the best corpus threshold and what it gives, overall, per category and in
    false positives; and what the detector's own (shipped) threshold gives."""
    results: dict[str, Any] = {}
    for profile in PROFILES:
        threshold, _ = best_threshold(files, profile)
        total = score_files(files, threshold, profile)
        at_shipped = score_files(files, shipped, profile)
        results[profile.name] = {
            "score": total.normalised(profile),
            "threshold": threshold,
            **_counts(total),
            "shipped": {
                "threshold": shipped,
                "score": at_shipped.normalised(profile),
                **_counts(at_shipped),
                "false_positives": false_positive_rates(files, shipped),
            },
            "categories": {
                category: {"score": o.normalised(profile), **_counts(o)}
                for category, group in by_category(files).items()
                for o in [score_files(group, threshold, profile)]
            },
            "false_positives": false_positive_rates(files, threshold),
        }
    return results


def _counts(o: Outcome) -> dict[str, Any]:
    return {
        "raw": o.raw,
        "windows": o.windows,
        "tp": o.true_positives,
        "fp": o.false_positives,
        "fn": o.false_negatives,
    }


def report(results: dict[str, Any], profiles: tuple[Profile, ...] = PROFILES) -> None:
    print_table(
        "NAB scores (one threshold per profile for the whole corpus)",
        ["profile", "score", "threshold", "windows", "TP", "FN", "FP", "FP rate outside"],
        [
            [
                p.name,
                f"{r['score']:.2f}",
                "never" if r["threshold"] >= NEVER else f"{r['threshold']:.6g}",
                r["windows"],
                r["tp"],
                r["fn"],
                r["fp"],
                f"{r['false_positives']['outside_windows_rate']:.2e}",
            ]
            for p in profiles
            for r in [results[p.name]]
        ],
    )
    print_table(
        "At the detector's own threshold",
        ["profile", "score", "threshold", "TP", "FN", "FP", "FP on artificialNoAnomaly"],
        [
            [
                p.name,
                f"{r['score']:.2f}",
                f"{r['threshold']:.6g}",
                r["tp"],
                r["fn"],
                r["fp"],
                r["false_positives"]["artificialNoAnomaly"],
            ]
            for p in profiles
            for r in [results[p.name]["shipped"]]
        ],
    )
    categories = list(results[profiles[0].name]["categories"])
    print_table(
        "Per category, at each profile's corpus threshold (score; TP/windows, FP)",
        ["category", *(p.name for p in profiles)],
        [
            [
                category,
                *(
                    f"{_score(c['score'])}  {c['tp']}/{c['windows']}  FP {c['fp']}"
                    for p in profiles
                    for c in [results[p.name]["categories"][category]]
                ),
            ]
            for category in categories
        ],
    )
    print_table(
        "False positives at each profile's threshold (after the probationary period)",
        ["profile", "artificialNoAnomaly", "rate", "outside windows", "rate"],
        [
            [
                p.name,
                fp["artificialNoAnomaly"],
                f"{fp['artificialNoAnomaly_rate']:.2e}",
                fp["outside_windows"],
                f"{fp['outside_windows_rate']:.2e}",
            ]
            for p in profiles
            for fp in [results[p.name]["false_positives"]]
        ],
    )


def _score(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{value:6.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=NAB / "data")
    parser.add_argument("--windows", type=Path, default=NAB / "combined_windows.json")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "nab")
    parser.add_argument("--batch", type=int, default=100, help="points per detector call")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_FILES)}")
    args = parser.parse_args()

    settings = load_settings()
    detector = Detector(settings.detector)
    windows = load_windows(args.windows)
    names = corpus_files(args.data, QUICK_FILES if args.quick else None)
    if not names:
        raise SystemExit(f"no <category>/<file>.csv under {args.data}")
    print(f"detector {detector.name}: {settings.detector}")

    files, points, elapsed = [], 0, 0.0
    for name in names:
        data = read_file(args.data, name, windows)
        started = time.perf_counter()
        scores = detect_file(detector, data, args.batch)
        elapsed += time.perf_counter() - started
        points += len(scores)
        scored = ScoredFile(name, scores, data.windows)
        files.append(scored)
        write_nab_results(args.out, detector.name, data, scored)
    print(
        f"{len(files)} files, {points:,} points, {sum(len(f.windows) for f in files)} windows;"
        f" detection {points / elapsed:,.0f} points/s; results in {args.out / detector.name}"
    )
    results = evaluate(files, detector.config.threshold)
    report(results)
    saved = write_results(
        "nab-quick" if args.quick else "nab",
        {"detector": detector.name, "files": len(files), "points": points, **results},
    )
    print(f"\n{saved}")


if __name__ == "__main__":
    main()
