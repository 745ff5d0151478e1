"""Alerting state in JetStream KV: configuration (watched copies), incidents (watched, and
changed only by compare-and-set), the notification log, channel health and dead letters.
Keys are `<tenant>.<id>`; the tenant always comes first, so a tenant's keys share a prefix."""

import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from driftlock.alerting.config import (
    Channel,
    Inhibition,
    MaintenanceWindow,
    Policy,
    Routing,
    Silence,
)
from driftlock.alerting.incident import Incident
from driftlock.alerting.records import ChannelHealth, DeadLetter
from driftlock.gateway.kvcache import KvCache

log = logging.getLogger("driftlock.alerting")

T = TypeVar("T")
WEEK_S = 7 * 86400.0
CAS_ATTEMPTS = 50


class ConflictError(Exception):
    """A compare-and-set lost too many races in a row."""


def tenant_values(cache: KvCache[T], tenant: str) -> list[T]:
    prefix = f"{tenant}."
    return [v for k, v in cache.items() if k.startswith(prefix)]


class AlertingStore:
    def __init__(self, js: JetStreamContext, prefix: str, retention_s: float = WEEK_S) -> None:
        self._js, self._prefix, self._retention_s = js, prefix, retention_s
        self.channels: KvCache[Channel]
        self.routing: KvCache[Routing]
        self.policies: KvCache[Policy]
        self.silences: KvCache[Silence]
        self.windows: KvCache[MaintenanceWindow]
        self.inhibitions: KvCache[Inhibition]
        self.incidents: KvCache[Incident]
        self.health: KvCache[ChannelHealth]
        self.dead_letters: KvCache[DeadLetter]
        self.nflog: KeyValue
        self.ratecap: KeyValue
        self.link_key = b""
        self._incident_codec = msgspec.json.Decoder(Incident)
        self._encoder = msgspec.json.Encoder()

    async def start(self) -> None:
        b = self._bucket
        self.channels = KvCache(await b("channels"), Channel)
        self.routing = KvCache(await b("routing"), Routing)
        self.policies = KvCache(await b("policies"), Policy)
        self.silences = KvCache(await b("silences"), Silence)
        self.windows = KvCache(await b("windows"), MaintenanceWindow)
        self.inhibitions = KvCache(await b("inhibitions"), Inhibition)
        self.incidents = KvCache(await b("incidents", self._retention_s), Incident)
        self.health = KvCache(await b("health"), ChannelHealth)
        self.dead_letters = KvCache(await b("deadletters", self._retention_s), DeadLetter)
        self.nflog = await b("nflog", self._retention_s)
        self.ratecap = await b("ratecap", 2 * 3600.0)
        for cache in self.caches:
            await cache.start()
        self.link_key = await self._link_key()

    @property
    def caches(self) -> list[KvCache[Any]]:
        return [
            self.channels,
            self.routing,
            self.policies,
            self.silences,
            self.windows,
            self.inhibitions,
            self.incidents,
            self.health,
            self.dead_letters,
        ]

    async def restart_watches(self) -> None:
        for cache in self.caches:
            await cache.restart()

    async def stop(self) -> None:
        for cache in self.caches:
            await cache.stop()

    async def _bucket(self, suffix: str, ttl: float | None = None) -> KeyValue:
        name = f"{self._prefix}_alert_{suffix}"
        try:
            return await self._js.key_value(name)
        except BucketNotFoundError:
            config = KeyValueConfig(bucket=name, ttl=ttl, storage=StorageType.FILE, history=1)
            try:
                return await self._js.create_key_value(config)
            except Exception:  # another process created it first
                return await self._js.key_value(name)

    async def _link_key(self) -> bytes:
        """The HMAC key of signed acknowledgement links, shared by alerters and gateways:
        the first process to start creates it."""
        kv = await self._bucket("secrets")
        with contextlib.suppress(KeyWrongLastSequenceError):
            await kv.create("ack_link_key", secrets.token_bytes(32).hex().encode())
        entry = await kv.get("ack_link_key")
        assert entry.value is not None
        return bytes.fromhex(entry.value.decode())

    def tenant_incidents(self, tenant: str) -> list[Incident]:
        return tenant_values(self.incidents, tenant)

    async def mutate_incident(
        self, key: str, change: Callable[[Incident | None], Incident | None]
    ) -> Incident | None:
        """Compare-and-set loop: `change` gets the stored incident (None if absent) and
        returns the new one, or None for "nothing to do". Whichever worker loses a race
        re-reads and decides again, so a change is recorded once however many try."""
        kv = self.incidents.kv
        for _ in range(CAS_ATTEMPTS):
            try:
                entry = await kv.get(key)
                assert entry.value is not None
                revision: int | None = entry.revision
                current: Incident | None = self._incident_codec.decode(entry.value)
            except KeyNotFoundError:
                revision, current = None, None
            updated = change(current)
            if updated is None:
                return current
            try:
                if revision is None:
                    await kv.create(key, self._encoder.encode(updated))
                else:
                    await kv.update(key, self._encoder.encode(updated), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return updated
        raise ConflictError(f"incident {key}: compare-and-set lost {CAS_ATTEMPTS} races")
