"""Silences, recurring maintenance windows and inhibition rules of the tenant."""

import time

import msgspec
from starlette.responses import JSONResponse, Response

from driftlock.alerting import config as cfg
from driftlock.alerting.store import tenant_values
from driftlock.alerting.suppress import in_window
from driftlock.gateway.alerting_api import alerting, new_id, object_id
from driftlock.gateway.alerting_models import (
    InhibitionCreate,
    InhibitionList,
    InhibitionOut,
    SilenceCreate,
    SilenceList,
    SilenceOut,
    WindowCreate,
    WindowList,
    WindowOut,
)
from driftlock.gateway.errors import invalid, not_found
from driftlock.gateway.kvcache import KvCache
from driftlock.gateway.roles import Permission
from driftlock.gateway.routing import Call, Endpoint


def _silence_out(s: cfg.Silence, now: float) -> SilenceOut:
    data = msgspec.to_builtins(s)
    fields = ("id", "matchers", "starts_at", "ends_at", "created_by", "comment")
    return SilenceOut.model_validate(
        {k: data[k] for k in fields} | {"active": s.starts_at <= now < s.ends_at}
    )


async def list_silences(call: Call) -> Response:
    now = time.time()
    silences = tenant_values(alerting(call).silences, call.tenant)
    silences.sort(key=lambda s: s.starts_at)
    body = SilenceList(silences=[_silence_out(s, now) for s in silences])
    return JSONResponse(body.model_dump())


async def create_silence(call: Call) -> Response:
    req: SilenceCreate = call.body
    now = time.time()
    starts = req.starts_at if req.starts_at is not None else now
    ends = req.ends_at if req.ends_at is not None else starts + (req.duration_s or 0)
    if ends <= starts:
        raise invalid([{"path": "ends_at", "message": "must be after starts_at"}])
    silence = cfg.Silence(
        id=new_id(),
        tenant=call.tenant,
        matchers=msgspec.convert(req.matchers.model_dump(), cfg.Matchers),
        starts_at=starts,
        ends_at=ends,
        created_by=f"{call.who.kind}:{call.who.subject}",
        comment=req.comment,
        created_at=now,
    )
    await alerting(call).silences.put(f"{call.tenant}.{silence.id}", silence)
    return JSONResponse(_silence_out(silence, now).model_dump(), status_code=201)


async def _delete(call: Call, cache: KvCache[object], param: str, what: str) -> Response:
    key = f"{call.tenant}.{object_id(call, param)}"
    if cache.get(key) is None:
        raise not_found(what)
    await cache.delete(key)
    return Response(status_code=204)


async def delete_silence(call: Call) -> Response:
    """Expire a silence now: what it held back is notified at the next evaluation."""
    return await _delete(call, alerting(call).silences, "silence_id", "silence")  # type: ignore[arg-type]


def _window_out(w: cfg.MaintenanceWindow, now: float) -> WindowOut:
    data = msgspec.to_builtins(w)
    return WindowOut.model_validate(
        {k: data[k] for k in ("id", "name", "matchers", "days", "start", "duration_s", "timezone")}
        | {"active": in_window(w, now)}
    )


async def list_windows(call: Call) -> Response:
    now = time.time()
    windows = sorted(tenant_values(alerting(call).windows, call.tenant), key=lambda w: w.created_at)
    return JSONResponse(WindowList(windows=[_window_out(w, now) for w in windows]).model_dump())


async def create_window(call: Call) -> Response:
    req: WindowCreate = call.body
    data = req.model_dump()
    window = cfg.MaintenanceWindow(
        **data | {"matchers": msgspec.convert(data["matchers"], cfg.Matchers)},
        id=new_id(),
        tenant=call.tenant,
        created_at=time.time(),
    )
    await alerting(call).windows.put(f"{call.tenant}.{window.id}", window)
    return JSONResponse(_window_out(window, time.time()).model_dump(), status_code=201)


async def delete_window(call: Call) -> Response:
    return await _delete(call, alerting(call).windows, "window_id", "maintenance window")  # type: ignore[arg-type]


def _inhibition_out(i: cfg.Inhibition) -> InhibitionOut:
    data = msgspec.to_builtins(i)
    return InhibitionOut.model_validate({k: data[k] for k in ("id", "source", "target", "equal")})


async def list_inhibitions(call: Call) -> Response:
    rules = tenant_values(alerting(call).inhibitions, call.tenant)
    rules.sort(key=lambda i: i.created_at)
    body = InhibitionList(inhibitions=[_inhibition_out(i) for i in rules])
    return JSONResponse(body.model_dump())


async def create_inhibition(call: Call) -> Response:
    req: InhibitionCreate = call.body
    data = req.model_dump()
    rule = cfg.Inhibition(
        id=new_id(),
        tenant=call.tenant,
        source=msgspec.convert(data["source"], cfg.Matchers),
        target=msgspec.convert(data["target"], cfg.Matchers),
        equal=data["equal"],
        created_at=time.time(),
    )
    await alerting(call).inhibitions.put(f"{call.tenant}.{rule.id}", rule)
    return JSONResponse(_inhibition_out(rule).model_dump(), status_code=201)


async def delete_inhibition(call: Call) -> Response:
    return await _delete(call, alerting(call).inhibitions, "inhibition_id", "inhibition rule")  # type: ignore[arg-type]


R, W = Permission.READ, Permission.MANAGE_ALERTING
ENDPOINTS = [
    Endpoint("GET", "/v1/alerting/silences", list_silences, "Silences, active and not",
             "alerting", R, response=SilenceList),
    Endpoint("POST", "/v1/alerting/silences", create_silence,
             "Silence incidents matching the matchers from starts_at to ends_at", "alerting", W,
             body=SilenceCreate, response=SilenceOut, status=201),
    Endpoint("DELETE", "/v1/alerting/silences/{silence_id}", delete_silence,
             "Remove a silence (what it held back is released)", "alerting", W, status=204),
    Endpoint("GET", "/v1/alerting/maintenance-windows", list_windows,
             "Recurring maintenance windows", "alerting", R, response=WindowList),
    Endpoint("POST", "/v1/alerting/maintenance-windows", create_window,
             "Create a recurring maintenance window", "alerting", W, body=WindowCreate,
             response=WindowOut, status=201),
    Endpoint("DELETE", "/v1/alerting/maintenance-windows/{window_id}", delete_window,
             "Delete a maintenance window", "alerting", W, status=204),
    Endpoint("GET", "/v1/alerting/inhibitions", list_inhibitions, "Inhibition rules",
             "alerting", R, response=InhibitionList),
    Endpoint("POST", "/v1/alerting/inhibitions", create_inhibition,
             "Create an inhibition rule", "alerting", W, body=InhibitionCreate,
             response=InhibitionOut, status=201),
    Endpoint("DELETE", "/v1/alerting/inhibitions/{inhibition_id}", delete_inhibition,
             "Delete an inhibition rule", "alerting", W, status=204),
]  # fmt: skip
