"""Online anomaly detectors: pure numpy/bottleneck, no I/O, deterministic, batch-invariant.

The same objects run in the actors and in offline evaluation (`bench/`), so what is measured
is what ships. A detector's output for a point depends only on the points before it, never on
how the stream was cut into batches: a replay after a crash gives identical results.
"""

from driftlock.detect.robust import Detections, DetectorConfig, RobustDetector, RobustState

__all__ = ["Detections", "DetectorConfig", "RobustDetector", "RobustState"]
