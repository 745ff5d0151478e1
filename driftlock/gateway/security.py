"""Credentials: argon2 passwords, JWT access tokens, opaque refresh tokens, API keys; and the
Principal every request runs as. The tenant always comes from here, never from the request."""

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.datastructures import Headers

from driftlock.gateway.control import ControlPlane, secret_hash
from driftlock.gateway.errors import forbidden, unauthorized
from driftlock.gateway.roles import PERMISSIONS, Permission, Role

_hasher = PasswordHasher()
API_KEY_PREFIX = "dlk_"
JWT_ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    role: Role
    kind: str
    """"user" or "api_key"."""
    subject: str
    """User id or API key id."""
    token_id: str = ""
    token_expires: float = 0.0

    @property
    def limiter_key(self) -> str:
        return f"{self.kind}:{self.subject}"

    def require(self, permission: Permission) -> None:
        if permission not in PERMISSIONS[self.role]:
            raise forbidden(f"role {self.role.value} may not {permission.value.replace('_', ' ')}")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


def new_api_key() -> tuple[str, str]:
    """(key id shown in listings, the full secret key shown once)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def new_refresh_token() -> str:
    return "dlr_" + secrets.token_urlsafe(32)


def issue_access_token(
    control: ControlPlane, *, user_id: str, tenant: str, role: Role, ttl_s: float
) -> tuple[str, str, float]:
    now = time.time()
    jti = secrets.token_hex(12)
    claims = {
        "sub": user_id,
        "ten": tenant,
        "role": role.value,
        "jti": jti,
        "iat": int(now),
        "exp": int(now + ttl_s),
        "typ": "access",
    }
    return jwt.encode(claims, control.signing_key, algorithm=JWT_ALGORITHM), jti, now + ttl_s


def authenticate(control: ControlPlane, headers: Headers) -> Principal:
    """The principal behind `Authorization: Bearer <jwt | api key>` or `X-API-Key`."""
    token = headers.get("x-api-key")
    if token is None:
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise unauthorized()
    token = token.strip()
    if token.startswith(API_KEY_PREFIX):
        return _api_key_principal(control, token)
    return _jwt_principal(control, token)


def _api_key_principal(control: ControlPlane, key: str) -> Principal:
    record = control.api_keys.get(secret_hash(key))
    if record is None:
        raise unauthorized("unknown or revoked API key")
    if record.expires_at is not None and record.expires_at <= time.time():
        raise unauthorized("API key expired")
    if control.tenants.get(record.tenant) is None:
        raise unauthorized("tenant no longer exists")
    return Principal(tenant=record.tenant, role=record.role, kind="api_key", subject=record.id)


_verified: dict[tuple[str, str], dict[str, Any]] = {}
"""Tokens whose signature was checked, with their claims: a client sends the same token
many times, and pyjwt's checks cost more than the rest of a request. Expiry and revocation
are still checked on every request."""
_VERIFIED_MAX = 50_000


def _claims(control: ControlPlane, token: str) -> dict[str, Any]:
    key = (control.signing_key, token)
    claims = _verified.get(key)
    if claims is None:
        try:
            claims = jwt.decode(
                token,
                control.signing_key,
                algorithms=[JWT_ALGORITHM],
                options={"require": ["exp", "sub", "ten", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("access token expired; refresh it") from None
        except jwt.InvalidTokenError:
            raise unauthorized("invalid access token") from None
        if len(_verified) >= _VERIFIED_MAX:
            _verified.clear()
        _verified[key] = claims
    if claims["exp"] <= time.time():
        raise unauthorized("access token expired; refresh it")
    return claims


def _jwt_principal(control: ControlPlane, token: str) -> Principal:
    claims = _claims(control, token)
    if claims.get("typ") != "access" or control.revoked.get(str(claims["jti"])) is not None:
        raise unauthorized("access token revoked")
    user = control.users.get(str(claims["sub"]))
    if user is None or user.tenant != claims["ten"]:
        raise unauthorized("user no longer exists")
    # The current role, not the one in the token: a demotion takes effect at once.
    return Principal(
        tenant=user.tenant,
        role=user.role,
        kind="user",
        subject=user.id,
        token_id=str(claims["jti"]),
        token_expires=float(claims["exp"]),
    )
