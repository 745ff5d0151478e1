"""The supervisor decides which partitions this node runs and keeps their workers alive.

On a single node it owns every partition. The cluster issue replaces `desired_partitions`
with membership + rendezvous hashing + leases; `assign()` is the seam it calls.
"""

import asyncio
import logging
from collections.abc import Callable, Iterable

from driftlock.actors.metrics import WorkerStatistics
from driftlock.actors.partition import PartitionWorker

log = logging.getLogger("driftlock.supervisor")

RESTART_DELAY_S = 1.0


class Supervisor:
    def __init__(self, worker_factory: Callable[[int], PartitionWorker], partitions: int) -> None:
        self._factory = worker_factory
        self._partitions = partitions
        self._workers: dict[int, PartitionWorker] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._closing = False

    def desired_partitions(self) -> set[int]:
        return set(range(self._partitions))

    def owned(self) -> set[int]:
        """The partitions this node runs now."""
        return set(self._tasks)

    def statistics(self) -> Iterable[WorkerStatistics]:
        return [w.statistics() for w in list(self._workers.values())]

    async def start(self) -> None:
        await self.assign(self.desired_partitions())

    async def assign(self, partitions: set[int]) -> None:
        """Run exactly these partitions: start the missing, gracefully stop the others."""
        for p in sorted(set(self._tasks) - partitions):
            await self._stop_partition(p)
        for p in sorted(partitions - set(self._tasks)):
            self._tasks[p] = asyncio.create_task(self._keep_running(p), name=f"partition-{p}")

    async def stop(self) -> None:
        self._closing = True
        await asyncio.gather(*(self._stop_partition(p) for p in list(self._tasks)))

    async def _stop_partition(self, partition: int) -> None:
        worker = self._workers.get(partition)
        if worker is not None:
            worker.stop()
        task = self._tasks.pop(partition, None)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        self._workers.pop(partition, None)

    async def _keep_running(self, partition: int) -> None:
        """A worker that fails is logged and restarted from its last committed sequence."""
        while True:
            worker = self._workers[partition] = self._factory(partition)
            try:
                await worker.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._closing or worker.stopping:
                    return
                log.exception("partition worker failed; restarting", extra={"partition": partition})
                await asyncio.sleep(RESTART_DELAY_S)
