"""Rejects what producers publish under `<prefix>.in.>` that the partition mapping cannot
take (a wrong number of tokens). The server rewrites every well-formed ingest subject before
delivery, so this subscription only ever sees the malformed ones."""

import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from driftlock.actors.metrics import NodeMetrics
from driftlock.bus.subjects import Subjects
from driftlock.wire.messages import Reject, RejectReason, json_encoder

QUEUE_GROUP = "driftlock-guard"


class SubjectGuard:
    def __init__(self, nc: Client, subjects: Subjects, metrics: NodeMetrics) -> None:
        self._nc, self._subjects, self._metrics = nc, subjects, metrics
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            self._subjects.ingest_all, queue=QUEUE_GROUP, cb=self._on_message
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        tenant = tokens[2] if len(tokens) > 2 else "_"
        reject = Reject(
            tenant=tenant,
            metric=tokens[3] if len(tokens) > 3 else "",
            subject=msg.subject,
            reason=RejectReason.INVALID_SUBJECT,
            detail=f"expected {self._subjects.prefix}.in.<tenant>.<metric> (exactly two tokens "
            "after 'in')",
            seq=0,
            rejected_at=time.time(),
        )
        self._metrics.rejects.labels(reject.reason.value).inc()
        await self._nc.publish(self._subjects.rejected(tenant), json_encoder.encode(reject))
