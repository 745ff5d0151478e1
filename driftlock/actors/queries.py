"""Request/reply queries answered by the node that owns a stream (DESIGN §2, `dl.q.…`).

- `<prefix>.q.metrics.<tenant>`: every node answers for the partitions it runs, saying which
  ones, so a caller gathers replies until all partitions are covered.
- `<prefix>.q.metric.<tenant>.<metric>`: only the owner of the stream's partition answers.
"""

import json
import logging
import math
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from driftlock.bus.partition import partition_of
from driftlock.bus.subjects import Subjects
from driftlock.detect import Detector
from driftlock.ids import is_valid_metric, is_valid_tenant
from driftlock.state import ActorRecord, StateStore

log = logging.getLogger("driftlock.queries")

MAX_METRICS_PER_REPLY = 5000
"""Keeps a reply under NATS's max payload; `truncated` tells the caller."""


def summary(metric: str, record: ActorRecord) -> dict[str, Any]:
    return {
        "metric": metric,
        "points": record.points,
        "anomalies": record.anomalies,
        "first_ts": record.first_ts,
        "last_ts": record.last_ts,
        "last_value": record.last_value,
    }


class QueryResponder:
    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        store: StateStore,
        detector: Detector,
        partitions: int,
        owned: Callable[[], set[int]],
    ) -> None:
        self._nc, self._subjects, self._store = nc, subjects, store
        self._detector, self._partitions, self._owned = detector, partitions, owned
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        p = self._subjects.prefix
        self._subs = [
            await self._nc.subscribe(f"{p}.q.metrics.*", cb=self._list_metrics),
            await self._nc.subscribe(f"{p}.q.metric.*.*", cb=self._describe_metric),
        ]

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()

    async def _list_metrics(self, msg: Msg) -> None:
        tenant = msg.subject.split(".")[-1]
        if not msg.reply or not is_valid_tenant(tenant):
            return
        owned = sorted(self._owned())
        metrics: list[dict[str, Any]] = []
        truncated = False
        for p in owned:
            for _, metric, record in self._store.iter_actors(p, tenant):
                if len(metrics) == MAX_METRICS_PER_REPLY:
                    truncated = True
                    break
                metrics.append(summary(metric, record))
        body = {"partitions": owned, "metrics": metrics, "truncated": truncated}
        await self._nc.publish(msg.reply, json.dumps(body).encode())

    async def _describe_metric(self, msg: Msg) -> None:
        _, _, _, tenant, metric = msg.subject.split(".", 4)
        if not msg.reply or not (is_valid_tenant(tenant) and is_valid_metric(metric)):
            return
        partition = partition_of(tenant, metric, self._partitions)
        if partition not in self._owned():
            return
        record = self._store.read_actor(partition, tenant, metric)
        if record is None:
            body: dict[str, Any] = {"found": False}
        else:
            body = {"found": True, **self.describe(metric, record)}
        await self._nc.publish(msg.reply, json.dumps(body).encode())

    def describe(self, metric: str, record: ActorRecord) -> dict[str, Any]:
        state = record.detector
        # The band a next point would be judged against: detect() is pure, so asking it
        # about a hypothetical point changes nothing.
        _, probe = self._detector.detect(
            state, np.array([record.last_value]), np.array([record.last_ts])
        )
        recent = np.frombuffer(state.values, dtype=np.float64).tolist()
        detector = {
            k: v for k, v in msgspec.structs.asdict(state).items() if not isinstance(v, bytes)
        }
        detector["name"] = self._detector.name
        band = (float(probe.lower[0]), float(probe.upper[0]))
        detector["expected"] = [b if math.isfinite(b) else None for b in band]
        detector["warm"] = state.count >= self._detector.config.warmup
        return {**summary(metric, record), "detector": detector, "recent_values": recent}
