"""Anomalies into incidents: the durable pull consumer on DL_ANOMALIES that every alerting
worker shares (each batch goes to one of them), routing, grouping, and one compare-and-set
per incident per batch."""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from driftlock.alerting.config import Defaults, RouteSettings
from driftlock.alerting.evaluate import Evaluator
from driftlock.alerting.incident import Incident, Status, add_anomalies
from driftlock.alerting.lifecycle import advance
from driftlock.alerting.matching import (
    anomaly_labels,
    default_routing,
    group_of,
    incident_key,
    resolve_routes,
)
from driftlock.alerting.metrics import AlertMetrics
from driftlock.alerting.store import AlertingStore, tenant_values
from driftlock.bus.subjects import Subjects
from driftlock.ids import is_valid_tenant
from driftlock.tracing import TRACE_KEYS, TRACEPARENT
from driftlock.wire.messages import Anomaly

log = logging.getLogger("driftlock.alerting")

DURABLE = "ALERTER"
Batch = list[tuple[Anomaly, dict[str, str]]]
Routed = tuple[str, RouteSettings, dict[str, str], dict[str, str]]


@dataclass
class Intake:
    nc: Client
    store: AlertingStore
    subjects: Subjects
    metrics: AlertMetrics
    clock: Callable[[], float]
    on_incident: Callable[[Incident], None]
    """called with each incident a batch changed, to start its notifications at once"""
    fetch_batch: int = 256
    defaults: Defaults = field(default_factory=Defaults)
    consumer_check_s: float = 30.0

    def __post_init__(self) -> None:
        self._decoder = msgspec.json.Decoder(Anomaly)
        self._last_seq = 0
        self.stopping = False
        """set by the alerter: finish the batch in hand (and ack it), then return"""

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        consumer = ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_ack_pending=50_000,
            # A new alerting deployment starts with what is detected from now on rather
            # than paging for a month of stored anomalies; a consumer lost under a running
            # alerter is recreated from the message after the last one it saw.
            deliver_policy=DeliverPolicy.NEW,
            filter_subject=self.subjects.anomaly_store_all,
        )
        if self._last_seq:
            consumer.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            consumer.opt_start_seq = self._last_seq + 1
        return await self.nc.jetstream().pull_subscribe(
            self.subjects.anomaly_store_all,
            durable=DURABLE,
            stream=self.subjects.anomalies_stream,
            config=consumer,
        )

    async def first_subscription(self) -> JetStreamContext.PullSubscription | None:
        """Subscribed before start() returns, so nothing stored after it is missed; None
        when the node has not created DL_ANOMALIES yet (the consumer task waits for it)."""
        try:
            return await self._subscribe()
        except Exception as exc:
            log.info("anomaly stream not there yet", extra={"error": repr(exc)})
            return None

    async def run(self, sub: JetStreamContext.PullSubscription | None) -> None:
        idle = 0.0
        while not self.stopping:
            if sub is None:
                await asyncio.sleep(1.0)
                sub = await self.first_subscription()
                continue
            try:
                msgs = await sub.fetch(self.fetch_batch, timeout=1.0)
            except TimeoutError:
                idle += 1.0
                if idle >= self.consumer_check_s:
                    idle = 0.0
                    sub = await self._check_consumer(sub)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fetch failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(0.5)
                sub = await self._check_consumer(sub)
                continue
            idle = 0.0
            await self._apply_batch(msgs)

    async def _check_consumer(
        self, sub: JetStreamContext.PullSubscription
    ) -> JetStreamContext.PullSubscription | None:
        """A pull on a deleted consumer just times out, so a quiet stream is checked now and
        then; a missing consumer is created again (None: retry soon)."""
        try:
            await self.nc.jetstream().consumer_info(self.subjects.anomalies_stream, DURABLE)
        except NotFoundError:
            log.warning("the alerting consumer is gone; creating it again")
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            return await self.first_subscription()
        except Exception as exc:  # NATS unreachable: the next fetch will tell
            log.info("could not check the alerting consumer", extra={"error": repr(exc)})
        return sub

    async def _apply_batch(self, msgs: list[Msg]) -> None:
        """Group the batch by incident, apply each group in one compare-and-set, then ack
        everything; on failure nak it all (re-applying is a no-op for anomalies already
        recorded: incidents remember the ids they saw)."""
        now = self.clock()
        groups: dict[str, tuple[RouteSettings, dict[str, str], Batch]] = {}
        correlator = Correlator(self.store, now)
        traces: dict[str, dict[str, str]] = {}
        for msg in msgs:
            anomaly = self._decode(msg)
            if anomaly is None:
                continue
            if msg.headers and TRACEPARENT in msg.headers:
                traces[anomaly.id] = {k: v for k, v in msg.headers.items() if k in TRACE_KEYS}
            for key, route, group, labels in self._route(anomaly, correlator):
                groups.setdefault(key, (route, group, []))[2].append((anomaly, labels))
        results = await asyncio.gather(
            *(self._absorb(key, *value, now, traces) for key, value in groups.items()),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        for msg in msgs:
            with contextlib.suppress(Exception):
                await (msg.nak(delay=1.0) if failed else msg.ack())
        if not failed and msgs:
            self._last_seq = max(self._last_seq, *(m.metadata.sequence.stream for m in msgs))
        if failed:
            log.warning("applying anomalies failed; redelivering", extra={"error": repr(failed[0])})

    def _decode(self, msg: Msg) -> Anomaly | None:
        try:
            anomaly = self._decoder.decode(msg.data)
        except msgspec.DecodeError:
            self.metrics.rejects.labels("malformed").inc()
            return None
        if not is_valid_tenant(anomaly.tenant):
            self.metrics.rejects.labels("invalid_tenant").inc()
            return None
        return anomaly

    def _route(self, a: Anomaly, correlator: "Correlator") -> list[Routed]:
        store = self.store
        routing = store.routing.get(a.tenant)
        if routing is None:
            channels = [c.id for c in tenant_values(store.channels, a.tenant)]
            if not channels:
                self.metrics.anomalies.labels("unrouted").inc()
                return []
            routing = default_routing(channels)
        labels = anomaly_labels(a, routing.labels)
        out: list[Routed] = []
        for route in resolve_routes(routing, labels, a.score, self.defaults):
            group = group_of(route, labels)
            key = f"{a.tenant}.{incident_key(a.tenant, route, group)}"
            if route.correlate_s > 0:
                key, group = correlator.join(a.tenant, route, key, group)
            out.append((key, route, group, labels))
        self.metrics.anomalies.labels("routed").inc()
        return out

    async def _absorb(
        self,
        key: str,
        route: RouteSettings,
        group: dict[str, str],
        batch: Batch,
        now: float,
        traces: dict[str, dict[str, str]],
    ) -> None:
        evaluator = Evaluator(self.store, now)
        slot = key.split(".", 1)[1]

        def change(current: Incident | None) -> Incident | None:
            inc = add_anomalies(current, slot, route, group, batch, now, traces)
            if inc is not None:
                # group_wait 0 notifies now, not at the next tick
                advance(inc, now, evaluator.suppressed(inc), evaluator.steps(inc))
            return inc

        inc = await self.store.mutate_incident(key, change)
        if inc is not None:
            self.on_incident(inc)


class Correlator:
    """Time-window correlation for one batch: an anomaly whose own group has no open
    incident joins the most recently active open incident of the same route and tenant, if
    that saw an anomaly within the route's `correlate_s`. Incidents the batch opens count
    too, so anomalies of several metrics arriving together become one incident."""

    def __init__(self, store: AlertingStore, now: float) -> None:
        self.store, self.now = store, now
        self._open: dict[tuple[str, str], list[tuple[str, Incident]]] | None = None
        self._new: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}

    def join(
        self, tenant: str, route: RouteSettings, key: str, group: dict[str, str]
    ) -> tuple[str, dict[str, str]]:
        own = self.store.incidents.get(key)
        if own is not None and own.status is not Status.RESOLVED:
            return key, group
        slot = (tenant, route.route)
        candidates = [
            (k, inc)
            for k, inc in self._index().get(slot, [])
            if self.now - inc.last_anomaly_at <= route.correlate_s
        ]
        if candidates:
            k, inc = max(candidates, key=lambda item: item[1].last_anomaly_at)
            return k, inc.group
        return self._new.setdefault(slot, (key, group))

    def _index(self) -> dict[tuple[str, str], list[tuple[str, Incident]]]:
        if self._open is None:
            self._open = {}
            for k, inc in self.store.incidents.items():
                if inc.status is not Status.RESOLVED:
                    self._open.setdefault((inc.tenant, inc.route.route), []).append((k, inc))
        return self._open
