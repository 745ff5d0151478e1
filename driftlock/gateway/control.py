"""Control data in JetStream KV buckets (DESIGN §6): tenants, users, API keys, refresh tokens,
revoked access tokens and the shared signing secret. Every gateway keeps a watched copy."""

import hashlib
import secrets
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from driftlock.bus.buckets import key_value
from driftlock.detect.tuning import BUCKET as DETECTION_BUCKET
from driftlock.detect.tuning import DetectionConfig
from driftlock.gateway.kvcache import KvCache
from driftlock.gateway.roles import Role


class TenantRecord(msgspec.Struct, kw_only=True):
    id: str
    name: str
    plan: str = "standard"
    created_at: float = 0.0


class UserRecord(msgspec.Struct, kw_only=True):
    id: str
    tenant: str
    email: str
    role: Role
    password_hash: str
    created_at: float = 0.0


class ApiKeyRecord(msgspec.Struct, kw_only=True):
    id: str
    tenant: str
    name: str
    role: Role
    created_at: float
    expires_at: float | None = None


class RefreshRecord(msgspec.Struct, kw_only=True):
    user_id: str
    tenant: str
    expires_at: float


class Revoked(msgspec.Struct, kw_only=True):
    until: float


def user_id_for(email: str) -> str:
    """Users are keyed by their normalised e-mail, so login needs no tenant."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


def secret_hash(secret: str) -> str:
    """API keys and refresh tokens are 256-bit random secrets: a plain SHA-256 suffices
    (argon2 is for low-entropy passwords) and keeps the per-request check cheap."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ControlPlane:
    def __init__(
        self, js: JetStreamContext, prefix: str, access_ttl_s: float, *, replicas: int = 1
    ) -> None:
        self._js, self._prefix, self._access_ttl_s = js, prefix, access_ttl_s
        self._replicas = replicas
        self.tenants: KvCache[TenantRecord]
        self.users: KvCache[UserRecord]
        self.api_keys: KvCache[ApiKeyRecord]
        self.revoked: KvCache[Revoked]
        self.detection: KvCache[DetectionConfig]
        self.refresh: KeyValue
        self.config: KeyValue
        self.signing_key = ""

    def _name(self, suffix: str) -> str:
        return f"{self._prefix}_{suffix}"

    async def start(self) -> None:
        self.tenants = KvCache(await self._bucket("tenants"), TenantRecord)
        self.users = KvCache(await self._bucket("users"), UserRecord)
        self.api_keys = KvCache(await self._bucket("apikeys"), ApiKeyRecord)
        # Revocations only need to outlive the access tokens they revoke.
        self.revoked = KvCache(await self._bucket("revoked", ttl=self._access_ttl_s + 60), Revoked)
        self.detection = KvCache(await self._bucket(DETECTION_BUCKET), DetectionConfig)
        self.refresh = await self._bucket("refresh")
        self.config = await self._bucket("config")
        for cache in self.caches:
            await cache.start()
        self.signing_key = await self._signing_key()

    @property
    def caches(self) -> list[KvCache[Any]]:
        return [self.tenants, self.users, self.api_keys, self.revoked, self.detection]

    async def restart_watches(self) -> None:
        for cache in self.caches:
            await cache.restart()

    async def stop(self) -> None:
        for cache in self.caches:
            await cache.stop()

    async def reachable(self) -> bool:
        try:
            await self._js.stream_info(f"KV_{self._name('tenants')}")
        except Exception:
            return False
        return True

    async def _bucket(self, suffix: str, ttl: float | None = None) -> KeyValue:
        return await key_value(self._js, self._name(suffix), replicas=self._replicas, ttl=ttl)

    async def _signing_key(self) -> str:
        """One HMAC secret shared by every gateway: the first to start creates it."""
        candidate = secrets.token_urlsafe(48)
        try:
            await self.config.create("jwt_signing_key", candidate.encode())
        except Exception:
            entry = await self.config.get("jwt_signing_key")
            assert entry.value is not None
            return entry.value.decode()
        return candidate
