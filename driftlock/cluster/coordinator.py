"""The cluster side of a node's supervisor (DESIGN §3).

Its heartbeat thread renews the leases and the membership record; every beat the
coordinator computes the desired owner of each partition by rendezvous hashing over the live
members, hands off the partitions it should no longer own and takes the ones it should, a
few at a time. A handoff is: stop the
worker (it finishes its batch), upload the partition's snapshot, release the lease. A take
is: acquire the lease, restore the snapshot if it is newer than the local copy, start the
worker, which replays from `last_applied_seq + 1`.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from driftlock.actors.metrics import NodeMetrics
from driftlock.actors.supervisor import Supervisor
from driftlock.cluster.heartbeat import HeartbeatThread
from driftlock.cluster.leases import Leases, LeaseState
from driftlock.cluster.membership import Membership
from driftlock.cluster.records import MemberRecord, PartitionLoad
from driftlock.cluster.rendezvous import assignment
from driftlock.cluster.snapshots import Snapshots
from driftlock.state.store import StateStore

log = logging.getLogger("driftlock.cluster")

MIN_BEAT_INTERVAL_S = 0.05
MOVE_RETRY_S = 1.0
SNAPSHOT_DUTY = 0.25
"""At most this share of the time goes to periodic snapshots. A round exports, compresses and
uploads every partition that changed: at 100,000 streams that is 2.6 GB, longer than the
interval, so rounds ran back to back, took the CPU and the disk from processing and held the
node's /metrics for seconds. After a round the next one waits three times as long as it took."""


class DutyCycle:
    """When periodic work may start again so that it keeps to its share of the time."""

    def __init__(self, share: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._share, self._clock = share, clock
        self._resume_at = 0.0

    def ready(self) -> bool:
        return self._clock() >= self._resume_at

    def ran(self, started: float) -> None:
        """A round that began at `started` (by the same clock) just ended."""
        ended = self._clock()
        self._resume_at = ended + (ended - started) * (1 / self._share - 1)


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    node_id: str
    instance: str
    partitions: int
    heartbeat_s: float
    snapshot_interval_s: float
    max_concurrent_moves: int
    nats_url: str
    prefix: str
    address: str = ""


class Coordinator:
    def __init__(
        self,
        *,
        config: CoordinatorConfig,
        supervisor: Supervisor,
        state: StateStore,
        membership: Membership,
        leases: Leases,
        snapshots: Snapshots,
        metrics: NodeMetrics,
    ) -> None:
        self._config = config
        self._supervisor, self._state = supervisor, state
        self._membership, self._leases, self._snapshots = membership, leases, snapshots
        self._metrics = metrics
        self._moving: dict[int, asyncio.Task[None]] = {}
        self._retry_after: dict[int, float] = {}
        self._snapshotted: dict[int, PartitionLoad] = {}
        self._snapshotter: asyncio.Task[None] | None = None
        self._snapshot_duty = DutyCycle(SNAPSHOT_DUTY)
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._started_at = time.time()
        self._closing = False
        self._heartbeat = HeartbeatThread(
            nats_url=config.nats_url,
            prefix=config.prefix,
            leases=leases,
            member=self._member_record(),
            interval_s=config.heartbeat_s,
        )

    def wake(self) -> None:
        """Something changed in the buckets: rebalance now instead of at the next beat."""
        self._wake.set()

    def owns(self, partition: int) -> bool:
        """Whether a worker may still publish and commit for this partition."""
        return self._leases.valid(partition)

    def settled(self) -> bool:
        """Whether this node runs every partition the live members assign to it, and no
        move is under way: the moment a node is ready for the data it is meant to take."""
        owners = assignment(self._membership.live(), self._config.partitions)
        mine = {p for p, owner in enumerate(owners) if owner == self._config.node_id}
        return bool(mine) and not self._moving and mine <= self._supervisor.owned()

    async def start(self) -> None:
        await self._membership.start()
        await self._leases.cache.start()
        await asyncio.to_thread(self._heartbeat.start)
        self._loop_task = asyncio.create_task(self._run(), name="cluster-coordinator")

    async def restart_watches(self) -> None:
        """After a reconnect: the watches may have missed updates while disconnected."""
        await self._membership.restart()
        await self._leases.cache.restart()

    async def stop(self) -> None:
        """Leave the cluster gracefully: others stop counting on us at once, and every
        partition is handed off with a fresh snapshot."""
        self._closing = True
        self._wake.set()
        # Not cancelled: a renewal cut off mid-request would leave its revision unknown.
        for task in [self._loop_task, self._snapshotter]:
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*self._moving.values(), return_exceptions=True)
        self._heartbeat.stop_membership()
        with contextlib.suppress(Exception):
            await self._membership.leave()
        # Leases stay renewed until each partition is handed off.
        released = await asyncio.gather(
            *(self._release(p) for p in sorted(self._leases.held())), return_exceptions=True
        )
        for failure in (r for r in released if isinstance(r, Exception)):
            log.warning("handoff failed at shutdown", extra={"error": repr(failure)})
        await asyncio.to_thread(self._heartbeat.stop)
        await self._membership.stop()
        await self._leases.cache.stop()

    async def _run(self) -> None:
        while not self._closing:
            try:
                await self._beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cluster heartbeat failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.heartbeat_s)
            self._wake.clear()
            # Changes come in bursts (a node leaving frees many leases): gather them.
            await asyncio.sleep(MIN_BEAT_INTERVAL_S)

    async def _beat(self) -> None:
        if self._closing:
            return
        for partition in self._leases.take_lost():
            await self._abandon(partition, cause="taken")
        for partition in sorted(self._leases.held() - set(self._moving)):
            if not self._leases.valid(partition):
                await self._abandon(partition, cause="lapsed")
            elif partition not in self._supervisor.owned():
                # Its worker stopped on a lapse the renewal has since repaired.
                log.info("partition resumed", extra={"partition": partition})
                self._supervisor.start_partition(partition)
        self._heartbeat.update_member(self._member_record())
        if not self._closing:
            self._rebalance()
            self._snapshot_when_due()

    def _rebalance(self) -> None:
        owners = assignment(self._membership.live(), self._config.partitions)
        me = self._config.node_id
        held = self._leases.held()
        for partition, owner in enumerate(owners):
            if partition in self._moving or len(self._moving) >= self._config.max_concurrent_moves:
                continue
            if partition in held and owner != me:
                self._move(partition, self._release(partition))
            elif partition not in held and owner == me and self._may_take(partition):
                self._move(partition, self._acquire(partition))

    def _may_take(self, partition: int) -> bool:
        if time.monotonic() < self._retry_after.get(partition, 0.0):
            return False
        return self._leases.state(partition) is not LeaseState.TAKEN

    def _move(self, partition: int, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._guarded(partition, work), name=f"move-{partition}")
        self._moving[partition] = task
        task.add_done_callback(lambda _: self._moved(partition))

    async def _guarded(self, partition: int, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as exc:
            # NATS unreachable or electing leaders: try this partition again a little later.
            self._retry_after[partition] = time.monotonic() + MOVE_RETRY_S
            log.warning("partition move failed", extra={"partition": partition, "error": repr(exc)})

    def _moved(self, partition: int) -> None:
        self._moving.pop(partition, None)
        if not self._closing:
            self._wake.set()

    async def _acquire(self, partition: int) -> None:
        previous = await self._leases.acquire(partition)
        if previous is None:
            return  # another node won the compare-and-set
        try:
            restored = await self._snapshots.restore_if_newer(self._state, partition)
        except Exception:
            log.exception("snapshot restore failed; giving the lease back", extra={"p": partition})
            await self._leases.release(partition, stop_requested_at=0.0, snapshot_seq=0)
            return
        self._supervisor.start_partition(partition)
        self._metrics.partition_moves.labels("acquired").inc()
        pause = time.time() - previous.stop_requested_at if previous.stop_requested_at else None
        if pause is not None:
            self._metrics.handoff_pause.observe(pause)
        log.info(
            "partition acquired",
            extra={
                "partition": partition,
                "from_node": previous.node or None,
                "restored_seq": restored,
                "handoff_pause_s": pause,
            },
        )

    async def _release(self, partition: int) -> None:
        stop_requested_at = time.time()
        await self._supervisor.stop_partition(partition)
        snapshot_seq = 0
        if self._leases.valid(partition):
            load = await self._upload(partition)
            snapshot_seq = load.snapshot_seq if load else 0
        await self._leases.release(
            partition, stop_requested_at=stop_requested_at, snapshot_seq=snapshot_seq
        )
        self._metrics.partition_moves.labels("released").inc()
        log.info("partition released", extra={"partition": partition, "snapshot_seq": snapshot_seq})

    async def _abandon(self, partition: int, cause: str) -> None:
        """The lease is gone: stop at once; the batch in hand is not committed."""
        self._leases.forget(partition)
        self._metrics.lease_losses.labels(cause).inc()
        log.warning("lease lost", extra={"partition": partition, "cause": cause})
        await self._supervisor.stop_partition(partition)

    def _snapshot_when_due(self) -> None:
        if self._snapshotter is not None and not self._snapshotter.done():
            return
        if not self._snapshot_duty.ready():
            return
        now = time.time()
        due = [
            p
            for p in sorted(self._supervisor.owned() - set(self._moving))
            if now - self._snapshotted.get(p, PartitionLoad()).snapshot_at
            >= self._config.snapshot_interval_s
            and self._applied(p) > self._snapshotted.get(p, PartitionLoad()).snapshot_seq
        ]
        if due:
            self._snapshotter = asyncio.create_task(self._upload_all(due), name="snapshots")

    async def _upload_all(self, partitions: list[int]) -> None:
        """One partition at a time: periodic snapshots must not compete with processing."""
        started = time.monotonic()
        try:
            for partition in partitions:
                if self._closing:
                    break  # the handoffs upload fresh snapshots; shutdown must not wait
                if self._leases.valid(partition):
                    await self._upload(partition)
        finally:
            self._snapshot_duty.ran(started)

    async def _upload(self, partition: int) -> PartitionLoad | None:
        started = time.perf_counter()
        try:
            info = await self._snapshots.upload(self._state, partition)
        except Exception as exc:
            log.warning(
                "snapshot upload failed", extra={"partition": partition, "error": repr(exc)}
            )
            return None
        self._metrics.snapshot_seconds.observe(time.perf_counter() - started)
        self._metrics.snapshot_bytes.inc(info.size)
        load = PartitionLoad(snapshot_seq=info.last_applied_seq, snapshot_at=info.taken_at)
        self._snapshotted[partition] = load
        return load

    def _applied(self, partition: int) -> int:
        worker = self._supervisor.worker(partition)
        return worker.last_applied_seq if worker is not None else 0

    def _member_record(self) -> MemberRecord:
        partitions = {}
        active = 0
        for stats in self._supervisor.statistics():
            snap = self._snapshotted.get(stats.partition, PartitionLoad())
            partitions[stats.partition] = PartitionLoad(
                last_applied_seq=stats.last_applied_seq,
                lag=stats.lag,
                snapshot_seq=snap.snapshot_seq,
                snapshot_at=snap.snapshot_at,
            )
            active += stats.active_actors
        return MemberRecord(
            id=self._config.node_id,
            instance=self._config.instance,
            address=self._config.address,
            started_at=self._started_at,
            heartbeat_at=time.time(),
            weight=self._membership.weight,
            draining=self._membership.draining(self._config.node_id),
            partitions=partitions,
            active_actors=active,
        )
