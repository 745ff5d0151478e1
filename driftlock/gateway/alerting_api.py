"""Alerting configuration of the tenant: the routing tree and escalation policies, and the
helpers every alerting route shares. Stored in KV, watched by every alerter; the tenant is
always the caller's, and ids of other tenants are simply not found."""

import secrets
import time

import msgspec
from starlette.responses import JSONResponse, Response

from driftlock.alerting import config as cfg
from driftlock.alerting.matching import default_routing
from driftlock.alerting.store import AlertingStore, tenant_values
from driftlock.gateway.alerting_models import (
    PolicyCreate,
    PolicyList,
    PolicyOut,
    RouteIn,
    RoutingIn,
    RoutingOut,
)
from driftlock.gateway.errors import ApiError, invalid, not_found
from driftlock.gateway.roles import Permission
from driftlock.gateway.routing import Call, Endpoint
from driftlock.ids import is_valid_tenant

MASK = "********"
TAGS = {"email", "slack", "webhook"}
TEST_TIMEOUT_S = 10.0


def alerting(call: Call) -> AlertingStore:
    store = call.gateway.alerting
    if store is None:
        raise ApiError(503, "unavailable", "alerting is not ready")
    return store


def object_id(call: Call, name: str) -> str:
    """A path id, or 404: anything not id-shaped cannot name an object."""
    value: str = call.request.path_params[name]
    if not is_valid_tenant(value):
        raise not_found(name.removesuffix("_id"))
    return value


def new_id() -> str:
    return secrets.token_hex(8)


# --- routing tree ----------------------------------------------------------------------


def _check_refs(
    store: AlertingStore, tenant: str, route: RouteIn, path: str
) -> list[dict[str, str]]:
    problems = []
    for i, channel in enumerate(route.channels or []):
        if store.channels.get(f"{tenant}.{channel}") is None:
            problems.append({"path": f"{path}.channels[{i}]", "message": "no such channel"})
    if route.policy is not None and store.policies.get(f"{tenant}.{route.policy}") is None:
        problems.append({"path": f"{path}.policy", "message": "no such escalation policy"})
    for i, child in enumerate(route.routes):
        problems += _check_refs(store, tenant, child, f"{path}.routes[{i}]")
    return problems


async def get_routes(call: Call) -> Response:
    store = alerting(call)
    routing = store.routing.get(call.tenant)
    configured = routing is not None
    if routing is None:
        routing = default_routing([c.id for c in tenant_values(store.channels, call.tenant)])
    body = RoutingOut(
        route=msgspec.to_builtins(routing.route),
        labels=msgspec.to_builtins(routing.labels),
        configured=configured,
    )
    return JSONResponse(body.model_dump())


async def put_routes(call: Call) -> Response:
    store = alerting(call)
    req: RoutingIn = call.body
    problems = _check_refs(store, call.tenant, req.route, "route")
    if problems:
        raise invalid(problems, "the routing tree refers to unknown objects")
    data = req.model_dump(by_alias=True)
    routing = cfg.Routing(
        route=msgspec.convert(data["route"], cfg.Route),
        labels=msgspec.convert(data["labels"], list[cfg.LabelRule]),
        updated_at=time.time(),
    )
    await store.routing.put(call.tenant, routing)
    return await get_routes(call)


# --- escalation policies ---------------------------------------------------------------


def _policy_out(p: cfg.Policy) -> PolicyOut:
    return PolicyOut.model_validate(
        {"id": p.id, "name": p.name, "steps": msgspec.to_builtins(p.steps),
         "created_at": p.created_at}
    )  # fmt: skip


async def list_policies(call: Call) -> Response:
    policies = sorted(
        tenant_values(alerting(call).policies, call.tenant), key=lambda p: p.created_at
    )
    return JSONResponse(PolicyList(policies=[_policy_out(p) for p in policies]).model_dump())


async def create_policy(call: Call) -> Response:
    store = alerting(call)
    req: PolicyCreate = call.body
    problems = [
        {"path": f"steps[{i}].channels[{j}]", "message": "no such channel"}
        for i, step in enumerate(req.steps)
        for j, channel in enumerate(step.channels)
        if store.channels.get(f"{call.tenant}.{channel}") is None
    ]
    if problems:
        raise invalid(problems, "the policy refers to unknown channels")
    policy = cfg.Policy(
        id=new_id(),
        tenant=call.tenant,
        name=req.name,
        steps=msgspec.convert(req.model_dump()["steps"], list[cfg.EscalationStep]),
        created_at=time.time(),
    )
    await store.policies.put(f"{call.tenant}.{policy.id}", policy)
    return JSONResponse(_policy_out(policy).model_dump(), status_code=201)


async def delete_policy(call: Call) -> Response:
    store = alerting(call)
    key = f"{call.tenant}.{object_id(call, 'policy_id')}"
    if store.policies.get(key) is None:
        raise not_found("policy")
    await store.policies.delete(key)
    return Response(status_code=204)


R, W = Permission.READ, Permission.MANAGE_ALERTING
ENDPOINTS = [
    Endpoint("GET", "/v1/alerting/routes", get_routes, "The routing tree", "alerting", R,
             response=RoutingOut),
    Endpoint("PUT", "/v1/alerting/routes", put_routes, "Replace the routing tree", "alerting",
             W, body=RoutingIn, response=RoutingOut),
    Endpoint("GET", "/v1/alerting/policies", list_policies, "Escalation policies", "alerting",
             R, response=PolicyList),
    Endpoint("POST", "/v1/alerting/policies", create_policy, "Create an escalation policy",
             "alerting", W, body=PolicyCreate, response=PolicyOut, status=201),
    Endpoint("DELETE", "/v1/alerting/policies/{policy_id}", delete_policy,
             "Delete an escalation policy", "alerting", W, status=204),
]  # fmt: skip
