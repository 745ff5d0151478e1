"""A DriftLock node: one NATS connection, one LMDB environment, a supervisor running the
partition workers, the subject guard and the Prometheus endpoint."""

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import start_http_server

from driftlock.actors.detection import DetectionThreads
from driftlock.actors.guard import SubjectGuard
from driftlock.actors.metrics import NodeMetrics
from driftlock.actors.partition import PartitionWorker, WorkerConfig
from driftlock.actors.queries import QueryResponder
from driftlock.actors.residency import ActiveActors
from driftlock.actors.scoring import INLINE_BUDGET_US, Scoring
from driftlock.actors.supervisor import Supervisor
from driftlock.actors.tuning_watch import TuningWatch
from driftlock.bus.buckets import key_value
from driftlock.bus.connection import connect, on_reconnected
from driftlock.bus.probe import verify_partition_mapping
from driftlock.bus.server import version_warning
from driftlock.bus.streams import StreamLimits, ensure_streams
from driftlock.bus.subjects import Subjects
from driftlock.cluster.coordinator import Coordinator, CoordinatorConfig
from driftlock.cluster.leases import Leases
from driftlock.cluster.membership import Membership
from driftlock.cluster.snapshots import Snapshots
from driftlock.detect import Detector
from driftlock.gcfreeze import freeze_long_lived
from driftlock.settings import Settings
from driftlock.state.store import StateStore

log = logging.getLogger("driftlock.node")


@dataclass
class Node:
    settings: Settings
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    metrics_port: int | None = None
    _nc: Client | None = None
    _control_nc: Client | None = None
    _store: StateStore | None = None
    _supervisor: Supervisor | None = None
    _coordinator: Coordinator | None = None
    _guard: SubjectGuard | None = None
    _queries: QueryResponder | None = None
    _http: WSGIServer | None = None
    _tuning: TuningWatch | None = None
    _threads: DetectionThreads | None = None

    @property
    def store(self) -> StateStore:
        assert self._store is not None, "node not started"
        return self._store

    @property
    def supervisor(self) -> Supervisor:
        assert self._supervisor is not None, "node not started"
        return self._supervisor

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down gracefully: every worker finishes and
        commits its batch in hand, then the connection drains."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.shutdown()

    async def start(self) -> None:
        s = self.settings
        subjects = Subjects(s.prefix)
        self._nc = nc = await connect(s.nats_url, name=f"driftlock-node-{s.node_id}")
        js = nc.jetstream()
        # Mapping first: a node set for the wrong partition count must not create DL_EVENTS.
        await verify_partition_mapping(nc, subjects, s.partitions)
        await ensure_streams(
            js,
            subjects,
            s.partitions,
            StreamLimits(s.events_max_age_s, s.anomalies_max_age_s, s.duplicate_window_s),
            replicas=s.replicas,
        )
        self._store = store = StateStore(
            s.data_dir / "state", map_size=s.lmdb_map_size, sync=s.lmdb_sync
        )
        self._tuning = await TuningWatch.start(js, s.prefix, replicas=s.replicas)
        on_reconnected(nc, self._tuning.restart)
        detector = Detector(s.detector, tuning=self._tuning.for_stream)
        detect_threads = s.detect_threads or os.cpu_count() or 1
        config = WorkerConfig(
            partitions=s.partitions,
            pull_batch=s.pull_batch,
            max_points_per_message=s.max_points_per_message,
            # Every partition may be in the middle of a piece: all of them together hold at
            # most a quarter of the limit beyond it.
            max_batch_streams=max(1, s.max_active_actors // (4 * s.partitions)),
            commit_interval_s=s.commit_interval_s,
        )
        self._threads = threads = DetectionThreads(detect_threads)
        scoring = Scoring(
            detector, threads, inline_budget_us=INLINE_BUDGET_US if detect_threads == 1 else 0.0
        )
        # One budget for the whole node: memory follows the actors in it, whatever the
        # number of partitions or of streams ever seen.
        actors = ActiveActors(max_active=s.max_active_actors, idle_s=s.passivate_after_s)

        def owns(partition: int) -> bool:
            return self._coordinator is not None and self._coordinator.owns(partition)

        def make_worker(partition: int) -> PartitionWorker:
            return PartitionWorker(
                partition,
                nc=nc,
                js=js,
                store=store,
                subjects=subjects,
                metrics=self.metrics,
                config=config,
                actors=actors,
                threads=threads,
                scoring=scoring,
                owns=owns,
            )

        self._supervisor = Supervisor(make_worker, s.node_id)
        self.metrics.watch(self._supervisor.statistics, store.statistics, actors.statistics)
        self._start_metrics_server()
        self._guard = SubjectGuard(nc, subjects, self.metrics)
        await self._guard.start()
        # Leases and heartbeats get a connection of their own: on the data connection their
        # replies would queue behind megabytes of pulled batches and time out under load.
        self._control_nc = control = await connect(
            s.nats_url, name=f"driftlock-node-{s.node_id}-control"
        )
        self._coordinator = await self._join_cluster(control.jetstream(), subjects)
        on_reconnected(control, self._coordinator.restart_watches)
        self._queries = QueryResponder(
            nc, subjects, store, detector, s.partitions, self._supervisor.owned
        )
        await self._queries.start()
        freeze_long_lived()
        server = nc.connected_server_version
        log.info(
            "node started",
            extra={
                "node_id": s.node_id,
                "pid": os.getpid(),
                "nats_url": s.nats_url,
                "nats_server": f"{server.major}.{server.minor}.{server.patch}",
                "partitions": s.partitions,
                "metrics_port": self.metrics_port,
            },
        )
        warning = version_warning(server.major, server.minor)
        if warning is not None:
            log.warning(warning)

    async def wait_settled(self, timeout_s: float) -> bool:
        """Wait until this node runs all the partitions assigned to it (False on timeout)."""
        deadline = time.monotonic() + timeout_s
        while self._coordinator is None or not self._coordinator.settled():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _join_cluster(self, js: JetStreamContext, subjects: Subjects) -> Coordinator:
        s = self.settings
        instance = uuid.uuid4().hex
        coordinator: Coordinator | None = None

        def wake() -> None:
            if coordinator is not None:
                coordinator.wake()

        members = await key_value(js, f"{s.prefix}_members", replicas=s.replicas, ttl=3600)
        drains = await key_value(js, f"{s.prefix}_drains", replicas=s.replicas)
        lease_kv = await key_value(js, f"{s.prefix}_leases", replicas=s.replicas)
        snapshots = Snapshots(js, f"{s.prefix}_snapshots", replicas=s.replicas)
        await snapshots.open()
        coordinator = Coordinator(
            config=CoordinatorConfig(
                node_id=s.node_id,
                instance=instance,
                partitions=s.partitions,
                heartbeat_s=min(s.member_ttl_s, s.lease_ttl_s) / 4,
                snapshot_interval_s=s.snapshot_interval_s,
                max_concurrent_moves=s.max_concurrent_moves,
                nats_url=s.nats_url,
                prefix=s.prefix,
                address=f"{s.metrics_host}:{self.metrics_port}" if self.metrics_port else "",
            ),
            supervisor=self.supervisor,
            state=self.store,
            membership=Membership(
                members,
                drains,
                node_id=s.node_id,
                weight=s.node_weight,
                ttl_s=s.member_ttl_s,
                on_change=wake,
            ),
            leases=Leases(
                lease_kv,
                node_id=s.node_id,
                instance=instance,
                ttl_s=s.lease_ttl_s,
                on_change=wake,
            ),
            snapshots=snapshots,
            metrics=self.metrics,
        )
        await coordinator.start()
        return coordinator

    def _start_metrics_server(self) -> None:
        port = self.settings.metrics_port
        if port < 0:
            return
        server, _ = start_http_server(
            port, addr=self.settings.metrics_host, registry=self.metrics.registry
        )
        self._http = server
        self.metrics_port = server.server_port

    async def shutdown(self) -> None:
        if self._tuning is not None:
            await self._tuning.stop()
        if self._queries is not None:
            await self._queries.stop()
        if self._guard is not None:
            await self._guard.stop()
        if self._coordinator is not None:
            await self._coordinator.stop()
        if self._supervisor is not None:
            await self._supervisor.stop()
        if self._threads is not None:
            self._threads.shutdown()
        if self._store is not None:
            self._store.close()
        for connection in (self._nc, self._control_nc):
            if connection is not None and not connection.is_closed:
                try:
                    await connection.drain()
                except Exception as exc:  # state is committed; NATS being unwell is no crash
                    log.warning("nats drain failed", extra={"error": repr(exc)})
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        log.info("node stopped", extra={"node_id": self.settings.node_id})
