"""Anomalies of the tenant: a paged query over DL_ANOMALIES and a live Server-Sent Events
stream of what the nodes detect."""

import asyncio
import contextlib
import fnmatch
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from starlette.responses import JSONResponse, Response, StreamingResponse

from driftlock.bus.subjects import Subjects
from driftlock.gateway.anomaly_index import SCAN_FACTOR
from driftlock.gateway.models import AnomalyPage, AnomalyQuery, StreamQuery
from driftlock.gateway.roles import Permission
from driftlock.gateway.routing import Call, Endpoint

KEEPALIVE_S = 15.0
_page_encoder = msgspec.json.Encoder()


def matches(a: dict[str, Any], pattern: str | None, min_score: float, kind: str | None) -> bool:
    return (
        (pattern is None or fnmatch.fnmatchcase(a["metric"], pattern))
        and a["score"] >= min_score
        and (kind is None or a["kind"] == kind)
    )


async def list_anomalies(call: Call) -> Response:
    q: AnomalyQuery = call.query
    index = call.gateway.anomalies
    answer = await index.query(call.tenant, q) if index is not None else None
    if answer is not None:  # the in-memory copy of the stream holds all the page can see
        encoded, next_cursor = answer
        body = _page_encoder.encode({"anomalies": encoded, "next_cursor": next_cursor})
        return Response(body, media_type="application/json")
    gw = call.gateway
    anomalies, next_cursor = await scan_stream(gw.nc, gw.js, gw.subjects, call.tenant, q)
    page = AnomalyPage.model_validate({"anomalies": anomalies, "next_cursor": next_cursor})
    return JSONResponse(page.model_dump(by_alias=True))


async def scan_stream(
    nc: Client, js: JetStreamContext, subjects: Subjects, tenant: str, q: AnomalyQuery
) -> tuple[list[dict[str, Any]], int | None]:
    """The page read from DL_ANOMALIES itself: one ephemeral consumer, one no-wait pull of
    the scan budget on a plain subscription (two round trips in all); the consumer is deleted
    without waiting for the answer."""
    metric = q.metric or "*"
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        filter_subject=f"{subjects.prefix}.x.anomaly.{tenant}.{metric}",
        inactive_threshold=30.0,
        deliver_policy=DeliverPolicy.ALL,
    )
    if q.cursor is not None:
        config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, q.cursor
    elif q.since is not None:
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        config.opt_start_time = datetime.fromtimestamp(q.since, UTC)
    stream = subjects.anomalies_stream
    info = await js.add_consumer(stream, config)
    assert info.name is not None
    try:
        if not info.num_pending:
            return [], None
        budget = min(q.limit * SCAN_FACTOR, info.num_pending)
        msgs = await _pull(nc, stream, info.name, budget)
    finally:
        await nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{info.name}", b"")
    found: list[dict[str, Any]] = []
    last_seq, pending = 0, info.num_pending
    for msg in msgs:
        meta = msg.reply.split(".")
        last_seq, stored_ns, pending = int(meta[5]), int(meta[7]), int(meta[8])
        if q.until is not None and stored_ns / 1e9 > q.until:
            return found, None
        a = json.loads(msg.data)
        if matches(a, q.metric_pattern, q.min_score, q.kind):
            found.append(a)
            if len(found) == q.limit:
                break
    return found, (last_seq + 1 if pending else None)


async def _pull(nc: Client, stream: str, consumer: str, count: int) -> list[Msg]:
    msgs: list[Msg] = []
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        if msg.reply:
            msgs.append(msg)
            if len(msgs) < count:
                return
        done.set()  # the batch is complete, or a status (404/408) ended the request

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        request = {"batch": count, "no_wait": True}
        await nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            json.dumps(request).encode(),
            reply=inbox,
        )
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await sub.unsubscribe()
    return msgs


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
