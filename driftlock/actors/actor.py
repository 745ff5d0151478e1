"""A stream actor: one tenant-metric stream, with exclusive ownership of its state.

Its mailbox is the slice of a partition batch that belongs to it: the partition worker hands
it all its points of a batch at once, so there is no asyncio task switch per event.
"""

import time

import numpy as np
import numpy.typing as npt

from driftlock.detect import Detections, Detector, DetectorState
from driftlock.detect.custom_rules import RuleHit
from driftlock.detect.custom_rules import evaluate as evaluate_rules
from driftlock.detect.tuning import StreamTuning
from driftlock.state.records import ActorRecord, encode
from driftlock.wire.messages import Anomaly, AnomalyKind, anomaly_id

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class StreamActor:
    __slots__ = ("last_active", "metric", "record", "tenant")

    last_active: float
    """When its partition last handed it a batch (monotonic; kept by ActiveActors)."""

    def __init__(self, tenant: str, metric: str, record: ActorRecord | None) -> None:
        self.tenant, self.metric = tenant, metric
        self.record = record or ActorRecord()
        self.last_active = time.monotonic()

    def apply(
        self,
        detector: Detector,
        ts: FloatArray,
        values: FloatArray,
        seqs: IntArray,
        indexes: IntArray,
    ) -> list[Anomaly]:
        """Apply points in stream order; returns the anomalies among them: the detectors'
        and the tenant's custom rules' (at the tenant's sensitivity for this metric)."""
        tuning = detector.tuning_for(self.tenant, self.metric)
        state, found = detector.detect(self.record.detector, values, ts, tuning.sensitivity)
        return self.absorb(tuning, ts, values, seqs, indexes, state, found)

    def absorb(
        self,
        tuning: StreamTuning,
        ts: FloatArray,
        values: FloatArray,
        seqs: IntArray,
        indexes: IntArray,
        state: DetectorState,
        found: Detections,
    ) -> list[Anomaly]:
        """`apply` once the detector has scored the points (`Detector.detect_joined` scores a
        partition's streams together): keep its new state, run the custom rules, and
        return the anomalies."""
        record = self.record
        before = (record.last_ts, record.last_value) if record.points else (None, None)
        record.detector = state
        hits = evaluate_rules(tuning.rules, ts, values, *before)
        if record.points == 0:
            record.first_ts = float(ts[0])
        record.points += len(values)
        record.last_ts, record.last_value = float(ts[-1]), float(values[-1])
        record.anomalies += len(found.anomalies) + len(hits)
        if not len(found.anomalies) and not hits:
            return []
        now = time.time()
        return self._detected(found, ts, values, seqs, indexes, now) + [
            self._rule_anomaly(hit, ts, values, seqs, indexes, now) for hit in hits
        ]

    def _rule_anomaly(
        self,
        hit: RuleHit,
        ts: FloatArray,
        values: FloatArray,
        seqs: IntArray,
        indexes: IntArray,
        now: float,
    ) -> Anomaly:
        j = hit.point
        seq, index = int(seqs[j]), int(indexes[j])
        return Anomaly(
            # A rule may fire on a point a detector flags too: its own id, so neither is
            # dropped as the other's duplicate.
            id=f"{anomaly_id(self.tenant, self.metric, seq, index)}.rule{hit.rule}",
            tenant=self.tenant,
            metric=self.metric,
            ts=float(ts[j]),
            value=float(values[j]),
            score=1.0,
            expected=hit.expected,
            kind=AnomalyKind.RULE,
            detectors=[hit.label],
            seq=seq,
            index=index,
            detected_at=now,
        )

    def _detected(
        self,
        found: Detections,
        ts: FloatArray,
        values: FloatArray,
        seqs: IntArray,
        indexes: IntArray,
        now: float,
    ) -> list[Anomaly]:
        return [
            Anomaly(
                id=anomaly_id(self.tenant, self.metric, int(seqs[j]), int(indexes[j])),
                tenant=self.tenant,
                metric=self.metric,
                ts=float(ts[j]),
                value=float(values[j]),
                score=round(float(found.score[j]), 6),
                expected=(float(found.lower[j]), float(found.upper[j])),
                kind=kind,
                detectors=agreed,
                seq=int(seqs[j]),
                index=int(indexes[j]),
                detected_at=now,
            )
            for j, kind, agreed in zip(found.anomalies, found.kinds, found.detectors, strict=True)
        ]

    def encoded(self) -> bytes:
        return encode(self.record)
