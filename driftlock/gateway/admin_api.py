"""Users, API keys and the tenant itself, always within the caller's tenant."""

import time

from starlette.responses import JSONResponse, Response

from driftlock.gateway.control import ApiKeyRecord, UserRecord, secret_hash, user_id_for
from driftlock.gateway.errors import ApiError, forbidden, not_found
from driftlock.gateway.models import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyOut,
    TenantOut,
    Usage,
    UserCreate,
    UserList,
    UserOut,
)
from driftlock.gateway.roles import Permission, can_grant
from driftlock.gateway.routing import Call, Endpoint
from driftlock.gateway.security import hash_password, new_api_key


def _user_out(u: UserRecord) -> UserOut:
    return UserOut(id=u.id, email=u.email, role=u.role, created_at=u.created_at)


def _key_out(k: ApiKeyRecord) -> ApiKeyOut:
    return ApiKeyOut(
        id=k.id, name=k.name, role=k.role, created_at=k.created_at, expires_at=k.expires_at
    )


async def list_users(call: Call) -> Response:
    users = sorted(
        (u for u in call.gateway.control.users.values() if u.tenant == call.tenant),
        key=lambda u: u.created_at,
    )
    return JSONResponse(UserList(users=[_user_out(u) for u in users]).model_dump())


async def create_user(call: Call) -> Response:
    req: UserCreate = call.body
    if not can_grant(call.who.role, req.role):
        raise forbidden(f"role {call.who.role.value} may not create {req.role.value} users")
    record = UserRecord(
        id=user_id_for(req.email),
        tenant=call.tenant,
        email=req.email.strip().lower(),
        role=req.role,
        password_hash=await hash_password(req.password),
        created_at=time.time(),
    )
    if not await call.gateway.control.users.create(record.id, record):
        raise ApiError(409, "conflict", "a user with this e-mail exists")
    return JSONResponse(_user_out(record).model_dump(), status_code=201)


async def delete_user(call: Call) -> Response:
    user_id = call.request.path_params["user_id"]
    user = call.gateway.control.users.get(user_id)
    if user is None or user.tenant != call.tenant:
        raise not_found("user")
    if not can_grant(call.who.role, user.role):
        raise forbidden(f"role {call.who.role.value} may not delete {user.role.value} users")
    if user.id == call.who.subject:
        raise ApiError(409, "conflict", "you cannot delete yourself")
    await call.gateway.control.users.delete(user.id)
    return Response(status_code=204)


async def list_keys(call: Call) -> Response:
    keys = sorted(
        (k for k in call.gateway.control.api_keys.values() if k.tenant == call.tenant),
        key=lambda k: k.created_at,
    )
    return JSONResponse(ApiKeyList(api_keys=[_key_out(k) for k in keys]).model_dump())


async def create_key(call: Call) -> Response:
    req: ApiKeyCreate = call.body
    if not can_grant(call.who.role, req.role):
        raise forbidden(f"role {call.who.role.value} may not create {req.role.value} keys")
    key_id, secret = new_api_key()
    now = time.time()
    record = ApiKeyRecord(
        id=key_id,
        tenant=call.tenant,
        name=req.name,
        role=req.role,
        created_at=now,
        expires_at=now + req.expires_in_s if req.expires_in_s else None,
    )
    await call.gateway.control.api_keys.put(secret_hash(secret), record)
    body = ApiKeyCreated(key=secret, **_key_out(record).model_dump())
    return JSONResponse(body.model_dump(), status_code=201)


async def delete_key(call: Call) -> Response:
    key_id = call.request.path_params["key_id"]
    control = call.gateway.control
    for hashed, record in control.api_keys.items():
        if record.id == key_id and record.tenant == call.tenant:
            await control.api_keys.delete(hashed)
            return Response(status_code=204)
    raise not_found("API key")


async def get_tenant(call: Call) -> Response:
    tenant = call.gateway.control.tenants.get(call.tenant)
    if tenant is None:
        raise not_found("tenant")
    usage = Usage(
        requests=call.gateway.usage_requests[call.tenant],
        points=call.gateway.usage_points[call.tenant],
    )
    body = TenantOut(id=tenant.id, name=tenant.name, plan=tenant.plan, usage=usage)
    return JSONResponse(body.model_dump())


ENDPOINTS = [
    Endpoint("GET", "/v1/users", list_users, "Users of the tenant", "admin",
             Permission.MANAGE_USERS, response=UserList),
    Endpoint("POST", "/v1/users", create_user, "Create a user", "admin",
             Permission.MANAGE_USERS, body=UserCreate, response=UserOut, status=201),
    Endpoint("DELETE", "/v1/users/{user_id}", delete_user, "Delete a user", "admin",
             Permission.MANAGE_USERS, status=204),
    Endpoint("GET", "/v1/api-keys", list_keys, "API keys of the tenant (never the secrets)",
             "admin", Permission.MANAGE_KEYS, response=ApiKeyList),
    Endpoint("POST", "/v1/api-keys", create_key, "Create an API key; the key is shown once",
             "admin", Permission.MANAGE_KEYS, body=ApiKeyCreate, response=ApiKeyCreated,
             status=201),
    Endpoint("DELETE", "/v1/api-keys/{key_id}", delete_key, "Revoke an API key", "admin",
             Permission.MANAGE_KEYS, status=204),
    Endpoint("GET", "/v1/tenant", get_tenant, "The tenant, its plan and usage", "admin",
             Permission.READ, response=TenantOut),
]  # fmt: skip
