"""A DriftLock node: one NATS connection, one LMDB environment, a supervisor running the
partition workers, the subject guard and the Prometheus endpoint."""

import asyncio
import logging
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from nats.aio.client import Client
from prometheus_client import start_http_server

from driftlock.actors.guard import SubjectGuard
from driftlock.actors.metrics import NodeMetrics
from driftlock.actors.partition import PartitionWorker, WorkerConfig
from driftlock.actors.queries import QueryResponder
from driftlock.actors.supervisor import Supervisor
from driftlock.actors.tuning_watch import TuningWatch
from driftlock.bus.connection import connect
from driftlock.bus.probe import verify_partition_mapping
from driftlock.bus.streams import StreamLimits, ensure_streams
from driftlock.bus.subjects import Subjects
from driftlock.detect import Detector
from driftlock.settings import Settings
from driftlock.state.store import StateStore

log = logging.getLogger("driftlock.node")


@dataclass
class Node:
    settings: Settings
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    metrics_port: int | None = None
    _nc: Client | None = None
    _store: StateStore | None = None
    _supervisor: Supervisor | None = None
    _guard: SubjectGuard | None = None
    _queries: QueryResponder | None = None
    _http: WSGIServer | None = None
    _tuning: TuningWatch | None = None

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
        )
        self._store = store = StateStore(
            s.data_dir / "state", map_size=s.lmdb_map_size, sync=s.lmdb_sync
        )
        self._tuning = await TuningWatch.start(js, s.prefix)
        detector = Detector(s.detector, tuning=self._tuning.for_stream)
        config = WorkerConfig(
            partitions=s.partitions,
            pull_batch=s.pull_batch,
            max_points_per_message=s.max_points_per_message,
            passivate_after_s=s.passivate_after_s,
        )

        def make_worker(partition: int) -> PartitionWorker:
            return PartitionWorker(
                partition,
                nc=nc,
                js=js,
                store=store,
                subjects=subjects,
                detector=detector,
                metrics=self.metrics,
                config=config,
            )

        self._supervisor = Supervisor(make_worker, s.partitions)
        self.metrics.watch(self._supervisor.statistics, store.statistics)
        self._start_metrics_server()
        self._guard = SubjectGuard(nc, subjects, self.metrics)
        await self._guard.start()
        await self._supervisor.start()
        self._queries = QueryResponder(
            nc, subjects, store, detector, s.partitions, self._supervisor.owned
        )
        await self._queries.start()
        log.info(
            "node started",
            extra={
                "node_id": s.node_id,
                "nats_url": s.nats_url,
                "partitions": s.partitions,
                "metrics_port": self.metrics_port,
            },
        )

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
        if self._supervisor is not None:
            await self._supervisor.stop()
        if self._store is not None:
            self._store.close()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        log.info("node stopped", extra={"node_id": self.settings.node_id})
