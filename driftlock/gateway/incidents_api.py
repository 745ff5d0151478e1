"""Incidents of the tenant: list, inspect, acknowledge (by an editor, or by anyone holding
the signed link from a notification), resolve; and the dead-letter records."""

import re
import time
from typing import Any

import msgspec
from pydantic import Field
from starlette.responses import JSONResponse, Response

from driftlock.alerting import links
from driftlock.alerting.incident import Incident, Status, acknowledge, resolve
from driftlock.alerting.store import AlertingStore, tenant_values
from driftlock.gateway.alerting_api import alerting
from driftlock.gateway.errors import ApiError, not_found
from driftlock.gateway.models import Strict
from driftlock.gateway.roles import Permission
from driftlock.gateway.routing import Call, Endpoint

INCIDENT_ID = re.compile(r"[0-9a-f]{20}")


class IncidentQuery(Strict):
    status: Status | None = None
    limit: int = Field(default=100, ge=1, le=1000)


class IncidentOut(Strict):
    id: str
    occurrence: int
    status: Status
    route: str
    group: dict[str, str]
    labels: dict[str, str]
    created_at: float
    updated_at: float
    last_anomaly_at: float
    anomaly_count: int
    metrics: list[str]
    max_score: float
    flapping: bool
    suppressed: str | None = Field(description="the silence, window or inhibition holding it")
    escalation_step: int
    acked_at: float | None
    acked_by: str | None
    resolved_at: float | None
    anomalies: list[dict[str, Any]]
    notifications: list[dict[str, Any]] = Field(description="changes and where they went")


class IncidentList(Strict):
    incidents: list[IncidentOut]


class AckLinkQuery(Strict):
    token: str = Field(min_length=1, max_length=2000)


class DeadLetterList(Strict):
    dead_letters: list[dict[str, Any]]


def _out(inc: Incident) -> IncidentOut:
    data = msgspec.to_builtins(inc)
    for private in ("tenant", "seen_ids", "opens", "changes", "first_detected_at",
                    "notified_count", "first_notified_at", "last_notified_at",
                    "notified_channels", "change_seq", "trace"):  # fmt: skip
        data.pop(private)
    data["route"] = inc.route.route
    data["notifications"] = msgspec.to_builtins(inc.changes)
    return IncidentOut.model_validate(data)


def _key(call: Call) -> str:
    incident_id: str = call.request.path_params["incident_id"]
    key = f"{call.tenant}.{incident_id}"
    if not INCIDENT_ID.fullmatch(incident_id) or alerting(call).incidents.get(key) is None:
        raise not_found("incident")
    return key


async def list_incidents(call: Call) -> Response:
    q: IncidentQuery = call.query
    found = [
        i
        for i in tenant_values(alerting(call).incidents, call.tenant)
        if q.status is None or i.status is q.status
    ]
    found.sort(key=lambda i: i.updated_at, reverse=True)
    return JSONResponse(IncidentList(incidents=[_out(i) for i in found[: q.limit]]).model_dump())


async def get_incident(call: Call) -> Response:
    inc = alerting(call).incidents.get(_key(call))
    if inc is None:
        raise not_found("incident")
    return JSONResponse(_out(inc).model_dump())


async def _transition(
    store: AlertingStore, key: str, who: str, ack: bool, occurrence: int | None = None
) -> Incident:
    now = time.time()
    outcome: dict[str, bool] = {}

    def change(current: Incident | None) -> Incident | None:
        if current is None or (occurrence is not None and current.occurrence != occurrence):
            outcome["stale"] = True
            return None
        done = acknowledge(current, who, now) if ack else resolve(current, now)
        return current if done else None

    inc = await store.mutate_incident(key, change)
    if inc is None or outcome.get("stale"):
        raise ApiError(409, "conflict", "the incident this link was for is over")
    return inc


def _who(call: Call) -> str:
    return f"{call.who.kind}:{call.who.subject}"


async def ack_incident(call: Call) -> Response:
    inc = await _transition(alerting(call), _key(call), _who(call), True)
    return JSONResponse(_out(inc).model_dump())


async def resolve_incident(call: Call) -> Response:
    inc = await _transition(alerting(call), _key(call), _who(call), False)
    return JSONResponse(_out(inc).model_dump())


async def ack_link(call: Call) -> Response:
    """The signed link of a notification: no login, the token names tenant, incident and
    occurrence, and is valid for a week. An acknowledged incident stays acknowledged."""
    store = alerting(call)
    q: AckLinkQuery = call.query
    try:
        token = links.verify(store.link_key, q.token, time.time())
    except links.InvalidToken as exc:
        raise ApiError(403, "forbidden", f"invalid acknowledgement link: {exc}") from None
    key = f"{token.tenant}.{token.incident}"
    if store.incidents.get(key) is None:
        raise not_found("incident")
    inc = await _transition(store, key, "link", True, token.occurrence)
    return JSONResponse({"incident": inc.id, "status": inc.status.value})


async def list_dead_letters(call: Call) -> Response:
    records = sorted(
        tenant_values(alerting(call).dead_letters, call.tenant), key=lambda d: d.at, reverse=True
    )
    items = []
    for d in records[:1000]:
        data = msgspec.to_builtins(d)
        data.pop("tenant")
        items.append(data)
    return JSONResponse(DeadLetterList(dead_letters=items).model_dump())


ENDPOINTS = [
    Endpoint("GET", "/v1/alerting/incidents", list_incidents, "Incidents, newest change first",
             "alerting", Permission.READ, query=IncidentQuery, response=IncidentList),
    Endpoint("GET", "/v1/alerting/incidents/{incident_id}", get_incident,
             "One incident with its anomalies and notifications", "alerting", Permission.READ,
             response=IncidentOut),
    Endpoint("POST", "/v1/alerting/incidents/{incident_id}/ack", ack_incident,
             "Acknowledge: stops escalation and reminders", "alerting",
             Permission.ACK_INCIDENTS, response=IncidentOut),
    Endpoint("POST", "/v1/alerting/incidents/{incident_id}/resolve", resolve_incident,
             "Resolve now", "alerting", Permission.ACK_INCIDENTS, response=IncidentOut),
    Endpoint("GET", "/v1/alerting/ack", ack_link,
             "Acknowledge through the signed link of a notification (no credentials)",
             "alerting", None, query=AckLinkQuery),
    Endpoint("GET", "/v1/alerting/dead-letters", list_dead_letters,
             "Notifications given up on (retries exhausted, rate cap, deleted channel)",
             "alerting", Permission.READ, response=DeadLetterList),
]  # fmt: skip
