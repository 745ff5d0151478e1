"""Delivering one incident change to one channel, once: claim it in the notification log
(create, or take over an expired lease with compare-and-set), send with retries and
exponential backoff, record the outcome (sent, dead letter, over the rate cap), update the
channel's health, and mark the change delivered on the incident."""

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from opentelemetry import propagate, trace

from driftlock import tracing
from driftlock.alerting import links, messages, senders
from driftlock.alerting.channel_state import record_health, within_cap
from driftlock.alerting.config import Channel
from driftlock.alerting.incident import Change, ChangeKind, Incident, mark_delivered
from driftlock.alerting.metrics import AlertMetrics
from driftlock.alerting.records import (
    DeadLetter,
    LogEntry,
    LogState,
)
from driftlock.alerting.store import AlertingStore

log = logging.getLogger("driftlock.alerting")

Clock = Callable[[], float]
LINK_TTL_S = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    worker: str
    attempts: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 10.0
    link_base_url: str = "http://127.0.0.1:8321"

    @property
    def lease_s(self) -> float:
        """Long enough for every attempt and backoff, so a slow but live sender is never
        taken over (which would send twice)."""
        backoff = sum(self.backoff_s * 1.1 * 2.0**i for i in range(self.attempts - 1))
        return self.attempts * self.timeout_s + backoff + 5.0


class Deliverer:
    def __init__(
        self,
        store: AlertingStore,
        http: httpx.AsyncClient,
        config: DeliveryConfig,
        metrics: AlertMetrics,
        clock: Clock = time.time,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.store, self.http, self.config = store, http, config
        self.metrics, self.clock = metrics, clock
        self.tracer = tracer or tracing.tracer("driftlock.alerting")
        self._log_codec = msgspec.json.Decoder(LogEntry)
        self._encoder = msgspec.json.Encoder()

    def links(self, inc: Incident) -> dict[str, str]:
        # Expiry from the incident, not the send: every channel and retry carries one link.
        token = links.AckToken(inc.tenant, inc.id, inc.occurrence, inc.created_at + LINK_TTL_S)
        base = self.config.link_base_url.rstrip("/")
        return {
            "ack": f"{base}/v1/alerting/ack?token={links.sign(self.store.link_key, token)}",
            "incident": f"{base}/v1/alerting/incidents/{inc.id}",
        }

    async def deliver(self, inc: Incident, change: Change, channel_id: str) -> Incident | None:
        """The incident as it stands after this change was marked delivered to the channel,
        or None when another live worker holds the send."""
        key = f"{inc.tenant}.{inc.id}.{change.n}.{channel_id}"
        revision = await self._claim(key)
        if revision is not None:
            channel = self.store.channels.get(f"{inc.tenant}.{channel_id}")
            entry = await self._send(inc, change, channel, channel_id)
            await self._record(key, entry, revision)
        elif not await self._settled(key):
            return None
        return await self.store.mutate_incident(
            f"{inc.tenant}.{inc.id}",
            lambda cur: (
                cur if cur is not None and mark_delivered(cur, change.n, channel_id) else None
            ),
        )

    async def _claim(self, key: str) -> int | None:
        """The log revision we own the send with, or None when someone else has it."""
        now = self.clock()
        mine = LogEntry(
            state=LogState.SENDING,
            worker=self.config.worker,
            lease_until=now + self.config.lease_s,
            at=now,
        )
        try:
            return await self.store.nflog.create(key, self._encoder.encode(mine))
        except KeyWrongLastSequenceError:
            pass
        entry = await self.store.nflog.get(key)
        assert entry.value is not None
        theirs = self._log_codec.decode(entry.value)
        if theirs.state is not LogState.SENDING or theirs.lease_until > now:
            return None
        log.warning("taking over an expired send", extra={"key": key, "from": theirs.worker})
        try:
            return await self.store.nflog.update(key, self._encoder.encode(mine), entry.revision)
        except KeyWrongLastSequenceError:
            return None

    async def _settled(self, key: str) -> bool:
        try:
            entry = await self.store.nflog.get(key)
        except KeyNotFoundError:
            return False
        assert entry.value is not None
        return self._log_codec.decode(entry.value).state is not LogState.SENDING

    async def _send(
        self, inc: Incident, change: Change, channel: Channel | None, channel_id: str
    ) -> LogEntry:
        now = self.clock()
        base = LogEntry(state=LogState.DEAD, worker=self.config.worker, lease_until=0, at=now)
        if channel is None:
            base.error = "channel no longer exists"
            await self._dead_letter(inc, change, channel_id, "channel_deleted", base)
            return base
        kind = type(channel.config).__name__.removesuffix("Config").lower()
        if not await within_cap(self.store, channel, now):
            base.state, base.error = LogState.CAPPED, f"over {channel.max_per_hour}/hour"
            self.metrics.notifications.labels(kind, "capped").inc()
            await self._dead_letter(inc, change, channel_id, "rate_cap", base)
            return base
        ctx = messages.context(inc, change, self.links(inc))
        nid = messages.notification_id(inc, change, channel_id)
        parent = propagate.extract(inc.trace) if inc.trace else None
        attributes = {"incident": inc.id, "change": str(change.kind), "channel": channel_id}
        with self.tracer.start_as_current_span(
            "alerting.notify", context=parent, attributes=attributes
        ):
            return await self._attempts(inc, change, channel, kind, ctx, nid, base)

    async def _attempts(
        self,
        inc: Incident,
        change: Change,
        channel: Channel,
        kind: str,
        ctx: dict[str, Any],
        nid: str,
        base: LogEntry,
    ) -> LogEntry:
        for attempt in range(1, self.config.attempts + 1):
            base.attempts = attempt
            try:
                await senders.send(channel, ctx, nid, self.http, self.config.timeout_s)
            except senders.DeliveryError as exc:
                base.error = str(exc)
                self.metrics.notifications.labels(kind, "failed").inc()
                await self._health(channel, str(exc))
                if not exc.retryable or attempt == self.config.attempts:
                    break
                delay = self.config.backoff_s * 2 ** (attempt - 1)
                await asyncio.sleep(delay * random.uniform(0.9, 1.1))
                continue
            base.state, base.error, base.at = LogState.SENT, "", self.clock()
            self.metrics.notifications.labels(kind, "sent").inc()
            if change.kind is ChangeKind.OPENED:
                self.metrics.latency.observe(max(0.0, base.at - inc.first_detected_at))
            await self._health(channel, None)
            return base
        self.metrics.notifications.labels(kind, "dead").inc()
        await self._dead_letter(inc, change, channel.id, "retries_exhausted", base)
        return base

    async def _record(self, key: str, entry: LogEntry, revision: int) -> None:
        try:
            await self.store.nflog.update(key, self._encoder.encode(entry), revision)
        except KeyWrongLastSequenceError:
            # Our lease ran out and another worker took over; it records its own outcome.
            log.warning("lost the send lease while sending", extra={"key": key})

    async def _health(self, channel: Channel, error: str | None) -> None:
        await record_health(self.store, channel, error, self.clock())

    async def _dead_letter(
        self, inc: Incident, change: Change, channel_id: str, reason: str, entry: LogEntry
    ) -> None:
        record = DeadLetter(
            tenant=inc.tenant,
            incident=inc.id,
            change=change.n,
            kind=str(change.kind),
            channel=channel_id,
            reason=reason,
            error=entry.error[:500],
            attempts=entry.attempts,
            at=entry.at,
        )
        log.warning("notification dead-lettered", extra={"reason": reason, "error": entry.error})
        await self.store.dead_letters.put(f"{inc.tenant}.{inc.id}-{change.n}-{channel_id}", record)
