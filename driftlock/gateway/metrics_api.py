"""Streams of the tenant and the live state of one, asked of the nodes that own them."""

import asyncio
import contextlib
import json
from typing import Any

from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from starlette.responses import JSONResponse, Response

from driftlock.gateway.errors import ApiError, invalid, not_found
from driftlock.gateway.models import MetricDetail, MetricList
from driftlock.gateway.roles import Permission
from driftlock.gateway.routing import Call, Endpoint
from driftlock.ids import METRIC_RULE, is_valid_metric

GATHER_TIMEOUT_S = 2.0


async def list_metrics(call: Call) -> Response:
    gateway = call.gateway
    partitions = gateway.settings.partitions
    covered: set[int] = set()
    metrics: dict[str, dict[str, Any]] = {}
    done = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        reply = json.loads(msg.data)
        covered.update(reply["partitions"])
        for m in reply["metrics"]:
            metrics[m["metric"]] = m
        if len(covered) >= partitions:
            done.set()

    inbox = gateway.nc.new_inbox()
    sub = await gateway.nc.subscribe(inbox, cb=on_reply)
    try:
        await gateway.nc.publish(
            f"{gateway.subjects.prefix}.q.metrics.{call.tenant}", b"", reply=inbox
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), GATHER_TIMEOUT_S)
    finally:
        await sub.unsubscribe()
    if not covered:
        raise ApiError(503, "unavailable", "no node answered; is a DriftLock node running?")
    headers = {} if len(covered) >= partitions else {"X-DriftLock-Partial": "true"}
    body = MetricList.model_validate(
        {"metrics": sorted(metrics.values(), key=lambda m: m["metric"])}
    )
    return JSONResponse(body.model_dump(), headers=headers)


async def get_metric(call: Call) -> Response:
    metric = call.request.path_params["metric"]
    if not is_valid_metric(metric):
        raise invalid([{"path": "metric", "message": METRIC_RULE}], "path is invalid")
    subject = f"{call.gateway.subjects.prefix}.q.metric.{call.tenant}.{metric}"
    try:
        reply = await call.gateway.nc.request(subject, b"", timeout=GATHER_TIMEOUT_S)
    except (NoRespondersError, NatsTimeoutError):
        raise ApiError(503, "unavailable", "the node owning this stream did not answer") from None
    body = json.loads(reply.data)
    if not body.pop("found"):
        raise not_found(f"metric {metric!r}")
    return JSONResponse(MetricDetail.model_validate(body).model_dump())


ENDPOINTS = [
    Endpoint("GET", "/v1/metrics", list_metrics, "Streams of the tenant", "metrics",
             Permission.READ, response=MetricList),
    Endpoint("GET", "/v1/metrics/{metric}", get_metric,
             "Live state of one stream, from the node that owns it", "metrics",
             Permission.READ, response=MetricDetail),
]  # fmt: skip
