"""The alerter process: the intake of anomalies, a tick that moves incidents on (group_wait,
escalation, auto-resolve, released silences), and the sends of their changes. Workers
coordinate only through KV compare-and-set, so any number can run."""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

import httpx
from nats.aio.client import Client
from prometheus_client import CollectorRegistry, start_http_server

from driftlock.alerting.config import Defaults
from driftlock.alerting.delivery import Deliverer, DeliveryConfig
from driftlock.alerting.evaluate import Evaluator
from driftlock.alerting.incident import Incident, Status
from driftlock.alerting.intake import Intake
from driftlock.alerting.metrics import AlertMetrics
from driftlock.alerting.store import AlertingStore
from driftlock.bus.connection import connect, on_reconnected
from driftlock.bus.subjects import Subjects

if TYPE_CHECKING:
    from driftlock.settings import Settings

log = logging.getLogger("driftlock.alerting")


@dataclass(frozen=True, slots=True)
class AlerterConfig:
    nats_url: str
    prefix: str = "dl"
    worker: str = field(default_factory=lambda: f"alerter-{uuid.uuid4().hex[:8]}")
    tick_s: float = 1.0
    fetch_batch: int = 256
    max_sends: int = 32
    attempts: int = 5
    backoff_s: float = 1.0
    send_timeout_s: float = 10.0
    link_base_url: str = "http://127.0.0.1:8321"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = -1
    defaults: Defaults = field(default_factory=Defaults)
    consumer_check_s: float = 30.0
    replicas: int = 1


class Alerter:
    def __init__(
        self,
        config: AlerterConfig,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config, self.clock = config, clock
        self.metrics = AlertMetrics(registry)
        self.subjects = Subjects(config.prefix)
        self.metrics_port: int | None = None
        self._nc: Client | None = None
        self._store: AlertingStore | None = None
        self._http: httpx.AsyncClient | None = None
        self._deliverer: Deliverer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self._inflight: set[tuple[str, int, str]] = set()
        self._send_slots = asyncio.Semaphore(config.max_sends)
        self._server: WSGIServer | None = None
        self._intake: Intake | None = None

    @property
    def store(self) -> AlertingStore:
        assert self._store is not None, "alerter not started"
        return self._store

    async def start(self) -> None:
        c = self.config
        self._nc = nc = await connect(c.nats_url, name=f"driftlock-{c.worker}")
        self._store = store = AlertingStore(nc.jetstream(), c.prefix, replicas=c.replicas)
        await store.start()
        on_reconnected(nc, store.restart_watches)
        self._http = httpx.AsyncClient(follow_redirects=False)
        delivery = DeliveryConfig(
            worker=c.worker,
            attempts=c.attempts,
            backoff_s=c.backoff_s,
            timeout_s=c.send_timeout_s,
            link_base_url=c.link_base_url,
        )
        self._deliverer = Deliverer(store, self._http, delivery, self.metrics, self.clock)
        self._start_metrics_server()
        self._intake = intake = Intake(
            nc, store, self.subjects, self.metrics, self.clock, self._schedule,
            fetch_batch=c.fetch_batch, defaults=c.defaults, consumer_check_s=c.consumer_check_s,
        )  # fmt: skip
        sub = await intake.first_subscription()
        self._tasks = [
            asyncio.create_task(intake.run(sub), name=f"{c.worker}-consume"),
            asyncio.create_task(self._tick_forever(), name=f"{c.worker}-tick"),
        ]
        log.info("alerter started", extra={"worker": c.worker, "metrics_port": self.metrics_port})

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking anomalies (the batch in hand is applied and acked) and ticking, give
        sends in flight `grace_s` to finish (an unfinished one is taken over by another
        worker once its lease expires)."""
        if self._intake is not None:
            self._intake.stopping = True
            await asyncio.wait(self._tasks[:1], timeout=grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sends:
            _, late = await asyncio.wait(set(self._sends), timeout=grace_s)
            for task in late:
                task.cancel()
            log.info("alerter stopping", extra={"unfinished_sends": len(late)})
        if self._http is not None:
            await self._http.aclose()
        if self._store is not None:
            await self._store.stop()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()  # acks are already out; a pull subscription cannot drain
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        log.info("alerter stopped", extra={"worker": self.config.worker})

    def _start_metrics_server(self) -> None:
        if self.config.metrics_port < 0:
            return
        server, _ = start_http_server(
            self.config.metrics_port, addr=self.config.metrics_host, registry=self.metrics.registry
        )
        self._server, self.metrics_port = server, server.server_port

    # --- the tick ------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            started = time.perf_counter()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tick failed")
            self.metrics.tick.observe(time.perf_counter() - started)
            await asyncio.sleep(self.config.tick_s)

    async def tick(self) -> None:
        now = self.clock()
        evaluator = Evaluator(self.store, now)
        due: list[str] = []
        counts = dict.fromkeys(Status, 0)
        for key, inc in self.store.incidents.items():
            counts[inc.status] += 1
            if inc.status is not Status.RESOLVED and evaluator.changes(inc):
                due.append(key)
            elif inc.pending():
                self._schedule(inc)
        for status, count in counts.items():
            self.metrics.incidents.labels(status.value).set(count)
        for chunk in range(0, len(due), 64):
            await asyncio.gather(
                *(self._advance(key, evaluator) for key in due[chunk : chunk + 64])
            )

    async def _advance(self, key: str, evaluator: Evaluator) -> None:
        def change(current: Incident | None) -> Incident | None:
            if current is None or not evaluator.apply(current):
                return None
            return current

        try:
            inc = await self.store.mutate_incident(key, change)
        except Exception as exc:
            log.warning("could not advance incident", extra={"key": key, "error": repr(exc)})
            return
        if inc is not None:
            self._schedule(inc)

    # --- delivery ------------------------------------------------------------------------

    def _schedule(self, inc: Incident) -> None:
        """Start a send for each undelivered (change, channel), oldest change first per
        channel, so a channel never hears "resolved" before "opened"."""
        blocked: set[str] = set()
        for change in sorted(inc.pending(), key=lambda c: c.n):
            for channel in change.channels:
                if channel in change.delivered or channel in blocked:
                    continue
                blocked.add(channel)
                slot = (f"{inc.tenant}.{inc.id}", change.n, channel)
                if slot in self._inflight:
                    continue
                self._inflight.add(slot)
                task = asyncio.create_task(self._send(inc, change.n, channel, slot))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)

    async def _send(self, inc: Incident, n: int, channel: str, slot: Any) -> None:
        assert self._deliverer is not None
        change = next(c for c in inc.changes if c.n == n)
        try:
            async with self._send_slots:
                fresh = await self._deliverer.deliver(inc, change, channel)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery failed", extra={"incident": inc.id, "channel": channel})
            return
        finally:
            self._inflight.discard(slot)
        if fresh is not None:
            self._schedule(fresh)  # the channel's next change, without waiting for a tick


def config_from(settings: "Settings", *, metrics_port: int | None = None) -> AlerterConfig:
    """The alerter's settings from the process settings; links point at the gateway unless
    `alert_link_base_url` names the public address."""
    s = settings
    link = s.alert_link_base_url or f"http://{s.gateway_host}:{s.gateway_port}"
    return AlerterConfig(
        nats_url=s.nats_url,
        prefix=s.prefix,
        worker=f"{s.node_id}-{uuid.uuid4().hex[:6]}",
        tick_s=s.alert_tick_s,
        fetch_batch=s.alert_fetch_batch,
        attempts=s.alert_send_attempts,
        backoff_s=s.alert_backoff_s,
        send_timeout_s=s.alert_send_timeout_s,
        link_base_url=link,
        metrics_host=s.metrics_host,
        metrics_port=s.alert_metrics_port if metrics_port is None else metrics_port,
        replicas=s.replicas,
    )
