"""Anomalies of the tenant: a paged query over DL_ANOMALIES and a live Server-Sent Events
stream of what the nodes detect."""

import asyncio
import contextlib
import fnmatch
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from starlette.responses import JSONResponse, Response, StreamingResponse

from driftlock.gateway.models import AnomalyPage, AnomalyQuery, StreamQuery
from driftlock.gateway.roles import Permission
from driftlock.gateway.routing import Call, Endpoint

SCAN_FACTOR = 10
"""A page scans at most this many stored anomalies per requested one, so a selective filter
costs bounded work; the cursor continues where the scan stopped."""
KEEPALIVE_S = 15.0


def matches(a: dict[str, Any], pattern: str | None, min_score: float, kind: str | None) -> bool:
    return (
        (pattern is None or fnmatch.fnmatchcase(a["metric"], pattern))
        and a["score"] >= min_score
        and (kind is None or a["kind"] == kind)
    )


async def list_anomalies(call: Call) -> Response:
    q: AnomalyQuery = call.query
    subjects = call.gateway.subjects
    metric = q.metric or "*"
    filter_subject = f"{subjects.prefix}.x.anomaly.{call.tenant}.{metric}"
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        filter_subject=filter_subject,
        inactive_threshold=30.0,
        deliver_policy=DeliverPolicy.ALL,
    )
    if q.cursor is not None:
        config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, q.cursor
    elif q.since is not None:
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        config.opt_start_time = datetime.fromtimestamp(q.since, UTC)
    anomalies, next_cursor = await _scan(call, subjects.anomalies_stream, config, q)
    page = AnomalyPage.model_validate({"anomalies": anomalies, "next_cursor": next_cursor})
    return JSONResponse(page.model_dump(by_alias=True))


async def _scan(
    call: Call, stream: str, config: ConsumerConfig, q: AnomalyQuery
) -> tuple[list[dict[str, Any]], int | None]:
    js = call.gateway.js
    info = await js.add_consumer(stream, config)
    assert info.name is not None
    found: list[dict[str, Any]] = []
    try:
        if info.num_pending == 0:
            return [], None
        sub = await js.pull_subscribe_bind(durable=info.name, stream=stream)
        budget = q.limit * SCAN_FACTOR
        last_seq = 0
        while budget > 0:
            msgs = await sub.fetch(min(budget, 256), timeout=2)
            for msg in msgs:
                budget -= 1
                meta = msg.metadata
                last_seq = meta.sequence.stream
                if q.until is not None and meta.timestamp.timestamp() > q.until:
                    return found, None
                a = json.loads(msg.data)
                if matches(a, q.metric_pattern, q.min_score, q.kind):
                    found.append(a)
                    if len(found) == q.limit:
                        return found, last_seq + 1 if meta.num_pending else None
                if meta.num_pending == 0:
                    return found, None
        return found, last_seq + 1
    finally:
        with contextlib.suppress(NotFoundError, Exception):
            await js.delete_consumer(stream, info.name)


async def stream_anomalies(call: Call) -> Response:
    q: StreamQuery = call.query
    subject = f"{call.gateway.subjects.prefix}.anomaly.{call.tenant}.>"
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)

    async def on_anomaly(msg: Msg) -> None:
        a = json.loads(msg.data)
        if matches(a, q.metric_pattern, q.min_score, q.kind.value if q.kind else None):
            with contextlib.suppress(asyncio.QueueFull):  # a stalled client loses, not the gateway
                queue.put_nowait(msg.data)

    sub = await call.gateway.nc.subscribe(subject, cb=on_anomaly)

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b": connected\n\n"
            while True:
                try:
                    data = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield b"event: anomaly\ndata: " + data + b"\n\n"
        finally:
            await sub.unsubscribe()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


ENDPOINTS = [
    Endpoint("GET", "/v1/anomalies", list_anomalies, "Stored anomalies, filtered and paged",
             "anomalies", Permission.READ, query=AnomalyQuery, response=AnomalyPage),
    Endpoint("GET", "/v1/anomalies/stream", stream_anomalies,
             "Live anomalies as Server-Sent Events (event: anomaly, data: the anomaly JSON)",
             "anomalies", Permission.READ, query=StreamQuery),
]  # fmt: skip
