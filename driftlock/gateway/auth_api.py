"""Log in, refresh, log out, who am I."""

import time

import msgspec
from starlette.responses import JSONResponse, Response

from driftlock.gateway.control import RefreshRecord, Revoked, secret_hash, user_id_for
from driftlock.gateway.errors import unauthorized
from driftlock.gateway.models import LogoutRequest, Me, RefreshRequest, TokenRequest, TokenResponse
from driftlock.gateway.roles import Permission
from driftlock.gateway.routing import Call, Endpoint
from driftlock.gateway.security import issue_access_token, new_refresh_token, verify_password
from driftlock.gateway.service import Gateway

_refresh_decoder = msgspec.json.Decoder(RefreshRecord)
_encoder = msgspec.json.Encoder()


async def _tokens(gateway: Gateway, user_id: str, tenant: str) -> Response:
    s = gateway.settings
    user = gateway.control.users.get(user_id)
    assert user is not None
    access, _, _ = issue_access_token(
        gateway.control, user_id=user_id, tenant=tenant, role=user.role, ttl_s=s.access_token_ttl_s
    )
    refresh = new_refresh_token()
    record = RefreshRecord(
        user_id=user_id, tenant=tenant, expires_at=time.time() + s.refresh_token_ttl_s
    )
    await gateway.control.refresh.put(secret_hash(refresh), _encoder.encode(record))
    body = TokenResponse(
        access_token=access, refresh_token=refresh, expires_in=int(s.access_token_ttl_s)
    )
    return JSONResponse(body.model_dump())


async def token(call: Call) -> Response:
    req: TokenRequest = call.body
    user = call.gateway.control.users.get(user_id_for(req.email))
    # Verify against a dummy hash when the user is unknown, so timing does not tell.
    ok = await verify_password(user.password_hash if user else _DUMMY_HASH, req.password)
    if user is None or not ok:
        call.gateway.metrics.auth_failures.inc()
        raise unauthorized("wrong e-mail or password")
    return await _tokens(call.gateway, user.id, user.tenant)


async def refresh(call: Call) -> Response:
    req: RefreshRequest = call.body
    key = secret_hash(req.refresh_token)
    try:
        entry = await call.gateway.control.refresh.get(key)
    except Exception:
        entry = None
    if entry is None or entry.value is None:
        raise unauthorized("unknown or revoked refresh token")
    record = _refresh_decoder.decode(entry.value)
    # Rotation: a refresh token works once.
    await call.gateway.control.refresh.delete(key)
    if record.expires_at <= time.time() or call.gateway.control.users.get(record.user_id) is None:
        raise unauthorized("refresh token expired")
    return await _tokens(call.gateway, record.user_id, record.tenant)


async def logout(call: Call) -> Response:
    req: LogoutRequest = call.body
    who = call.who
    if who.kind == "user":
        await call.gateway.control.revoked.put(who.token_id, Revoked(until=who.token_expires))
    if req.refresh_token:
        key = secret_hash(req.refresh_token)
        try:
            entry = await call.gateway.control.refresh.get(key)
        except Exception:
            entry = None
        if entry is not None and entry.value is not None:
            record = _refresh_decoder.decode(entry.value)
            if record.tenant == who.tenant:
                await call.gateway.control.refresh.delete(key)
    return Response(status_code=204)


async def me(call: Call) -> Response:
    who = call.who
    return JSONResponse(
        Me(tenant=who.tenant, role=who.role, kind=who.kind, subject=who.subject).model_dump()
    )


_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$"
    "2s8mJmFHr8qzL8DV3mEDYSGv6sdJ1pT2nxYv4Qq3oNQ"
)

ENDPOINTS = [
    Endpoint("POST", "/v1/auth/token", token, "Exchange e-mail and password for tokens", "auth",
             None, body=TokenRequest, response=TokenResponse),
    Endpoint("POST", "/v1/auth/refresh", refresh, "Exchange a refresh token for new tokens",
             "auth", None, body=RefreshRequest, response=TokenResponse),
    Endpoint("POST", "/v1/auth/logout", logout, "Revoke this access token and a refresh token",
             "auth", Permission.SELF, body=LogoutRequest, status=204),
    Endpoint("GET", "/v1/me", me, "Who the credentials belong to", "auth", Permission.SELF,
             response=Me),
]  # fmt: skip
