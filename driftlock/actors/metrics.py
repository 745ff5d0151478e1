"""Prometheus metrics of a node. Counters are bumped once per batch; gauges are read from
`statistics()` snapshots at scrape time, so metrics code stays out of the hot path."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from driftlock.actors.residency import ResidencyStatistics
from driftlock.state.store import StoreStatistics


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    partition: int
    last_applied_seq: int
    lag: int
    active_actors: int


class NodeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_applied = Counter(
            "driftlock_events_applied", "Points applied to actor state", registry=r
        )
        self.messages = Counter(
            "driftlock_messages_processed", "Stored messages processed", registry=r
        )
        self.rejects = Counter(
            "driftlock_rejects", "Rejected points or messages, by reason", ["reason"], registry=r
        )
        self.anomalies = Counter(
            "driftlock_anomalies", "Anomalies published, by kind", ["kind"], registry=r
        )
        self.states_written = Counter(
            "driftlock_state_records_written",
            "Actor states committed to LMDB: one per stream per commit, however many of the "
            "commit's batches it was in",
            registry=r,
        )
        self.state_bytes_written = Counter(
            "driftlock_state_written_bytes", "Bytes of actor state committed to LMDB", registry=r
        )
        self.batch_seconds = Histogram(
            "driftlock_batch_seconds",
            "Time to process one piece of a pulled batch (decode, detect, publish)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.partition_moves = Counter(
            "driftlock_partition_moves",
            "Partitions this node acquired or released",
            ["direction"],
            registry=r,
        )
        self.handoff_pause = Histogram(
            "driftlock_handoff_pause_seconds",
            "From the old owner's stop request to this node running the partition",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.lease_losses = Counter(
            "driftlock_lease_losses",
            "Leases lost without a release, by cause (taken by another node, lapsed)",
            ["cause"],
            registry=r,
        )
        self.snapshot_seconds = Histogram(
            "driftlock_snapshot_seconds",
            "Time to export and upload one partition snapshot",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.snapshot_bytes = Counter(
            "driftlock_snapshot_bytes", "Bytes of partition snapshots uploaded", registry=r
        )

    def watch(
        self,
        workers: Callable[[], Iterable[WorkerStatistics]],
        store: Callable[[], StoreStatistics],
        actors: Callable[[], ResidencyStatistics],
    ) -> None:
        self.registry.register(_SnapshotCollector(workers, store, actors))


class _SnapshotCollector(Collector):
    def __init__(
        self,
        workers: Callable[[], Iterable[WorkerStatistics]],
        store: Callable[[], StoreStatistics],
        actors: Callable[[], ResidencyStatistics],
    ) -> None:
        self._workers, self._store, self._actors = workers, store, actors

    def collect(self) -> Iterable[Metric]:
        lag = GaugeMetricFamily(
            "driftlock_partition_lag", "Messages stored but not yet applied", labels=["partition"]
        )
        applied = GaugeMetricFamily(
            "driftlock_partition_last_applied_seq",
            "Last stream sequence applied",
            labels=["partition"],
        )
        active = 0
        for w in self._workers():
            lag.add_metric([str(w.partition)], w.lag)
            applied.add_metric([str(w.partition)], w.last_applied_seq)
            active += w.active_actors
        store = self._store()
        actors = GaugeMetricFamily("driftlock_actors", "Stream actors", labels=["state"])
        actors.add_metric(["active"], active)
        actors.add_metric(["passivated"], max(store.actors - active, 0))
        yield lag
        yield applied
        yield actors
        yield from self._residency()
        yield GaugeMetricFamily("driftlock_lmdb_size_bytes", "LMDB used size", store.size_bytes)
        yield GaugeMetricFamily(
            "driftlock_lmdb_transactions", "LMDB write transactions", store.transactions
        )

    def _residency(self) -> Iterable[Metric]:
        r = self._actors()
        yield GaugeMetricFamily(
            "driftlock_actors_max_active", "Actors a node keeps in memory at most", r.max_active
        )
        activations = CounterMetricFamily(
            "driftlock_actor_activations",
            "Actors brought into memory: a new stream, or restored from LMDB",
            labels=["source"],
        )
        activations.add_metric(["new"], r.created)
        activations.add_metric(["lmdb"], r.restored)
        yield activations
        yield CounterMetricFamily(
            "driftlock_actor_restore_seconds",
            "Time spent reading actors back from LMDB (activations with source lmdb)",
            r.restore_seconds,
        )
        evictions = CounterMetricFamily(
            "driftlock_actor_evictions",
            "Actors that left memory (their state stays in LMDB): idle for "
            "--passivate-after-s, or least recently used beyond --max-active-actors",
            labels=["cause"],
        )
        evictions.add_metric(["idle"], r.evicted_idle)
        evictions.add_metric(["limit"], r.evicted_limit)
        yield evictions
