"""Notification channels of the tenant: e-mail, Slack and webhooks, their health, and a test
send. Secrets are stored as given (KV is the control plane's store) and never shown again."""

import secrets
import time
from typing import Any

import httpx
import msgspec
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from driftlock.alerting import config as cfg
from driftlock.alerting import senders
from driftlock.alerting.channel_state import record_health
from driftlock.alerting.incident import AnomalyRef, Change, ChangeKind, Incident
from driftlock.alerting.messages import context
from driftlock.alerting.store import AlertingStore, tenant_values
from driftlock.gateway.alerting_api import alerting, new_id, object_id
from driftlock.gateway.alerting_models import (
    ChannelCreate,
    ChannelCreated,
    ChannelList,
    ChannelOut,
    HealthOut,
    TestResult,
)
from driftlock.gateway.errors import invalid, not_found
from driftlock.gateway.roles import Permission
from driftlock.gateway.routing import Call, Endpoint, error_path, json_body

MASK = "********"
TAGS = {"email", "slack", "webhook"}
TEST_TIMEOUT_S = 10.0


def _masked(config: cfg.ChannelConfig) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(config)
    for secret in ("password", "secret"):
        if out.get(secret):
            out[secret] = MASK
    if "webhook_url" in out:  # Slack's URL is itself the credential
        out["webhook_url"] = senders.safe_url(out["webhook_url"])
    return out


def _channel_out(store: AlertingStore, c: cfg.Channel) -> ChannelOut:
    health = store.health.get(f"{c.tenant}.{c.id}")
    return ChannelOut(
        id=c.id,
        name=c.name,
        type=c.config.__class__.__name__.removesuffix("Config").lower(),
        config=_masked(c.config),
        max_per_hour=c.max_per_hour,
        created_at=c.created_at,
        health=HealthOut(**msgspec.to_builtins(health)) if health is not None else None,
    )


def _parse_channel(data: Any) -> ChannelCreate:
    """Validated like every body, but with the union's tag left out of error paths:
    `config.url`, not `config.webhook.url`."""
    try:
        return ChannelCreate.model_validate(data)
    except ValidationError as exc:
        details = []
        for e in exc.errors():
            loc = tuple(e["loc"])
            if len(loc) > 1 and loc[0] == "config" and loc[1] in TAGS:
                loc = (loc[0], *loc[2:])
            details.append({"path": error_path(loc), "message": e["msg"]})
        raise invalid(details, "body is invalid") from None


async def list_channels(call: Call) -> Response:
    store = alerting(call)
    channels = sorted(tenant_values(store.channels, call.tenant), key=lambda c: c.created_at)
    body = ChannelList(channels=[_channel_out(store, c) for c in channels])
    return JSONResponse(body.model_dump())


async def create_channel(call: Call) -> Response:
    store = alerting(call)
    req = _parse_channel(await json_body(call.request))
    data = req.config.model_dump()
    generated = None
    if data["type"] == "webhook" and data["secret"] is None:
        data["secret"] = generated = secrets.token_urlsafe(32)
    channel = cfg.Channel(
        id=new_id(),
        tenant=call.tenant,
        name=req.name,
        config=msgspec.convert(data, cfg.ChannelConfig),
        max_per_hour=req.max_per_hour,
        created_at=time.time(),
    )
    await store.channels.put(f"{call.tenant}.{channel.id}", channel)
    out = _channel_out(store, channel)
    body = ChannelCreated(**out.model_dump(), secret=generated)
    return JSONResponse(body.model_dump(), status_code=201)


def _channel(call: Call) -> cfg.Channel:
    channel = alerting(call).channels.get(f"{call.tenant}.{object_id(call, 'channel_id')}")
    if channel is None:
        raise not_found("channel")
    return channel


async def get_channel(call: Call) -> Response:
    return JSONResponse(_channel_out(alerting(call), _channel(call)).model_dump())


async def delete_channel(call: Call) -> Response:
    channel = _channel(call)
    await alerting(call).channels.delete(f"{call.tenant}.{channel.id}")
    return Response(status_code=204)


async def test_channel(call: Call) -> Response:
    """Send a sample notification now, once, without retries; the outcome is returned and
    also recorded as the channel's health."""
    channel = _channel(call)
    now = time.time()
    sample = _sample_incident(call.tenant, now)
    change = Change(n=0, kind=ChangeKind.OPENED, at=now, channels=[channel.id])
    ctx = context(sample, change, {"ack": "", "incident": ""})
    nid = f"{call.tenant}.test-{new_id()}.0.{channel.id}"
    error = None
    try:
        async with httpx.AsyncClient(follow_redirects=False) as http:
            await senders.send(channel, ctx, nid, http, TEST_TIMEOUT_S)
    except senders.DeliveryError as exc:
        error = str(exc)
    await record_health(alerting(call), channel, error, time.time())
    return JSONResponse(TestResult(delivered=error is None, error=error).model_dump())


def _sample_incident(tenant: str, now: float) -> Incident:
    route = cfg.RouteSettings(
        route="test", channels=(), policy=None, group_by=("metric",), group_wait_s=0,
        group_interval_s=0, repeat_interval_s=0, resolve_after_s=0, flap_window_s=0,
        flap_threshold=3,
    )  # fmt: skip
    anomaly = AnomalyRef(
        id=f"{tenant}.sample.1.0", metric="sample:latency", ts=now, value=95.0, score=0.93,
        kind="spike", expected=(40.0, 60.0), detected_at=now,
    )  # fmt: skip
    return Incident(
        id="test", tenant=tenant, occurrence=1, route=route, group={"metric": "sample:latency"},
        labels={"tenant": tenant, "metric": "sample:latency"}, created_at=now, updated_at=now,
        last_anomaly_at=now, first_detected_at=now, anomalies=[anomaly], anomaly_count=1,
        metrics=["sample:latency"], max_score=0.93,
    )  # fmt: skip


R, W = Permission.READ, Permission.MANAGE_ALERTING
ENDPOINTS = [
    Endpoint("GET", "/v1/alerting/channels", list_channels, "Notification channels, with health",
             "alerting", R, response=ChannelList),
    Endpoint("POST", "/v1/alerting/channels", create_channel,
             "Create an e-mail, Slack or webhook channel", "alerting", W, body=ChannelCreate,
             response=ChannelCreated, status=201, parse_body=False),
    Endpoint("GET", "/v1/alerting/channels/{channel_id}", get_channel, "One channel",
             "alerting", R, response=ChannelOut),
    Endpoint("DELETE", "/v1/alerting/channels/{channel_id}", delete_channel, "Delete a channel",
             "alerting", W, status=204),
    Endpoint("POST", "/v1/alerting/channels/{channel_id}/test", test_channel,
             "Send a sample notification now and report the outcome", "alerting", W,
             response=TestResult),
]  # fmt: skip
