"""A stream actor: one tenant-metric stream, with exclusive ownership of its state.

Its mailbox is the slice of a partition batch that belongs to it: the partition worker hands
it all its points of a batch at once, so there is no asyncio task switch per event.
"""

import time

import numpy as np
import numpy.typing as npt

from driftlock.detect import Detector
from driftlock.state.records import ActorRecord, encode
from driftlock.wire.messages import Anomaly, anomaly_id

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class StreamActor:
    __slots__ = ("last_active", "metric", "record", "tenant")

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
        """Apply points in stream order; returns the anomalies among them."""
        record = self.record
        record.detector, found = detector.detect(record.detector, values, ts)
        if record.points == 0:
            record.first_ts = float(ts[0])
        record.points += len(values)
        record.last_ts, record.last_value = float(ts[-1]), float(values[-1])
        record.anomalies += len(found.anomalies)
        self.last_active = time.monotonic()
        if not len(found.anomalies):
            return []
        now = time.time()
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
