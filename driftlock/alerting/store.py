"""Alerting state in JetStream KV: configuration (watched copies), incidents (watched, and
changed only by compare-and-set), the notification log, channel health and dead letters.
Keys are `<tenant>.<id>`; the tenant always comes first, so a tenant's keys share a prefix."""

import contextlib
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
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
from driftlock.bus.buckets import key_value
from driftlock.gateway.kvcache import KvCache

log = logging.getLogger("driftlock.alerting")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
WEEK_S = 7 * 86400.0
CAS_ATTEMPTS = 50


class ConflictError(Exception):
    """A compare-and-set lost too many races in a row."""


class Keyed(Protocol[T_co]):
    """A watched bucket."""

    def items(self) -> Iterator[tuple[str, T_co]]: ...


def tenant_values(cache: Keyed[T], tenant: str) -> list[T]:
    prefix = f"{tenant}."
    return [v for k, v in cache.items() if k.startswith(prefix)]


class AlertingStore:
    def __init__(
        self, js: JetStreamContext, prefix: str, retention_s: float = WEEK_S, *, replicas: int = 1
    ) -> None:
        self._js, self._prefix, self._retention_s = js, prefix, retention_s
        self._replicas = replicas
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
        return await key_value(self._js, name, replicas=self._replicas, ttl=ttl)

    async def _link_key(self) -> bytes:
        """The HMAC key of signed acknowledgement links, shared by alerters and gateways:
        the first process to start creates it."""
        kv = await self._bucket("secrets")
        with contextlib.suppress(KeyWrongLastSequenceError):
            await kv.create("ack_link_key", secrets.token_bytes(32).hex().encode())
        entry = await kv.get("ack_link_key")
        assert entry.value is not None
        return bytes.fromhex(entry.value.decode())

    def _cached(self, key: str) -> tuple[int | None, Incident | None]:
        found = self.incidents.versioned(key)
        if found is None:
            return None, None
        value = found.value
        # A private copy: `change` mutates what it is given.
        copy = self._incident_codec.decode(self._encoder.encode(value)) if value else None
        return found.revision, copy

    async def _read(self, key: str) -> tuple[int | None, Incident | None]:
        try:
            entry = await self.incidents.kv.get(key)
        except KeyNotFoundError:
            return None, None
        assert entry.value is not None
        return entry.revision, self._incident_codec.decode(entry.value)

    async def mutate_incident(
        self, key: str, change: Callable[[Incident | None], Incident | None]
    ) -> Incident | None:
        """Compare-and-set loop: `change` gets the stored incident (None if absent) and
        returns the new one, or None for "nothing to do". Whichever worker loses a race
        re-reads and decides again, so a change is recorded once however many try."""
        kv = self.incidents.kv
        for attempt in range(CAS_ATTEMPTS):
            if attempt == 0:
                # Optimistic first try from the watched copy (value and revision of the same
                # watch event): saves the read round trip unless someone wrote since.
                revision, current = self._cached(key)
            else:
                revision, current = await self._read(key)
            updated = change(current)
            if updated is None:
                if attempt == 0:
                    continue  # decided on a possibly stale copy: decide again on a fresh read
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
