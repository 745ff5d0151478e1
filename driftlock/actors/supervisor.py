"""The supervisor runs the partition workers this node owns and keeps them alive.

Which partitions it owns is decided elsewhere: the cluster coordinator starts and stops
partitions as leases come and go. Every start and stop is logged with the partition and the
wall time, so ownership can be audited across nodes.
"""

import asyncio
import logging
from collections.abc import Callable, Iterable

from driftlock.actors.metrics import WorkerStatistics
from driftlock.actors.partition import OwnershipLost, PartitionWorker

log = logging.getLogger("driftlock.supervisor")

RESTART_DELAY_S = 1.0


class Supervisor:
    def __init__(self, worker_factory: Callable[[int], PartitionWorker], node_id: str) -> None:
        self._factory = worker_factory
        self._node_id = node_id
        self._workers: dict[int, PartitionWorker] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._closing = False

    def owned(self) -> set[int]:
        """The partitions this node runs now."""
        return set(self._tasks)

    def worker(self, partition: int) -> PartitionWorker | None:
        return self._workers.get(partition)

    def statistics(self) -> Iterable[WorkerStatistics]:
        return [w.statistics() for w in list(self._workers.values())]

    def start_partition(self, partition: int) -> None:
        if partition in self._tasks:
            return
        self._log_ownership("partition started", partition)
        self._tasks[partition] = asyncio.create_task(
            self._keep_running(partition), name=f"partition-{partition}"
        )

    async def stop_partition(self, partition: int) -> None:
        """Gracefully: the worker finishes and commits the batch in hand (unless it no
        longer owns the partition), then stops."""
        worker = self._workers.get(partition)
        if worker is not None:
            worker.stop()
        task = self._tasks.pop(partition, None)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
            self._log_ownership("partition stopped", partition)
        self._workers.pop(partition, None)

    async def stop(self) -> None:
        self._closing = True
        await asyncio.gather(*(self.stop_partition(p) for p in list(self._tasks)))

    def _log_ownership(self, message: str, partition: int) -> None:
        log.info(message, extra={"partition": partition, "node_id": self._node_id})

    async def _keep_running(self, partition: int) -> None:
        """A worker that fails is logged and restarted from its last committed sequence."""
        while True:
            worker = self._workers[partition] = self._factory(partition)
            try:
                await worker.run()
                return
            except asyncio.CancelledError:
                raise
            except OwnershipLost:
                log.warning("partition worker lost its lease", extra={"partition": partition})
                self._tasks.pop(partition, None)
                self._workers.pop(partition, None)
                self._log_ownership("partition stopped", partition)
                return
            except Exception:
                if self._closing or worker.stopping:
                    return
                log.exception("partition worker failed; restarting", extra={"partition": partition})
                await asyncio.sleep(RESTART_DELAY_S)
