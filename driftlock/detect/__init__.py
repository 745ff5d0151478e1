"""Online anomaly detectors: numpy and compiled per-point loops, no I/O, deterministic,
batch-invariant.

The same objects run in the actors and in offline evaluation (`bench/`), so what is measured
is what ships. A detector's output for a point depends only on the points before it, never on
how the stream was cut into batches: a replay after a crash gives identical results.
"""

from driftlock.detect.config import DetectorConfig
from driftlock.detect.ensemble import DETECTORS, Detections, Detector
from driftlock.detect.state import DetectorState

__all__ = [
    "DETECTORS",
    "Detections",
    "Detector",
    "DetectorConfig",
    "DetectorState",
]
