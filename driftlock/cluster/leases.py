"""Partition leases in KV bucket `<prefix>_leases` (DESIGN §3), taken and renewed with
compare-and-set on the key's revision.

Safety rests on two clocks that never need to agree. The holder counts its lease valid
until `ttl` after it *sent* its last successful renewal; another node counts it expired only
once the revision it last saw has stood still for `ttl` on its own clock, and it saw that
revision after the holder sent it. So the holder always stops first. A stale view only makes
the compare-and-set fail; it can never hand one lease to two nodes.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import msgspec
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from driftlock.cluster.records import LeaseRecord, lease_key
from driftlock.gateway.kvcache import KvCache

log = logging.getLogger("driftlock.cluster")

_encoder = msgspec.json.Encoder()


class LeaseState(Enum):
    FREE = "free"  # never taken, deleted, or released
    OURS = "ours"  # recorded under this node's id (this or a previous incarnation)
    EXPIRED = "expired"  # another node's, not renewed for a lease period
    TAKEN = "taken"  # another node's, alive


@dataclass(slots=True)
class Held:
    revision: int
    valid_until: float  # time.monotonic()
    record: LeaseRecord
    # Renewals run on the heartbeat thread, releases on the node's loop. They must not race:
    # both compare-and-set on the revision, and the loser would take a live lease for lost.
    lock: threading.Lock = field(default_factory=threading.Lock)


class Leases:
    def __init__(
        self,
        kv: KeyValue,
        *,
        node_id: str,
        instance: str,
        ttl_s: float,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._kv, self._node_id, self._instance, self._ttl = kv, node_id, instance, ttl_s
        self.cache: KvCache[LeaseRecord] = KvCache(kv, LeaseRecord, on_change)
        self._held: dict[int, Held] = {}
        self._lost: list[int] = []
        self._guard = threading.Lock()  # _held and _lost are shared with the heartbeat thread

    def held(self) -> set[int]:
        with self._guard:
            return set(self._held)

    def take_lost(self) -> list[int]:
        """Partitions whose lease another node took since the last call."""
        with self._guard:
            lost, self._lost = self._lost, []
        return lost

    def valid(self, partition: int) -> bool:
        held = self._held.get(partition)
        return held is not None and time.monotonic() < held.valid_until

    def state(self, partition: int) -> LeaseState:
        key = lease_key(partition)
        record, seen = self.cache.get(key), self.cache.seen(key)
        if record is None or not record.node:
            return LeaseState.FREE
        if record.node == self._node_id:
            # Node ids are unique per running node (like Kafka's static membership): a
            # lease under our id is a previous incarnation's, dead since we started.
            return LeaseState.OURS
        if seen is not None and time.monotonic() - seen.at > self._ttl:
            return LeaseState.EXPIRED
        return LeaseState.TAKEN

    async def acquire(self, partition: int) -> LeaseRecord | None:
        """Take the lease if the revision is still the one we saw; returns the record it
        replaced (empty if there was none), or None if another node got there first."""
        key = lease_key(partition)
        previous = self.cache.get(key) or LeaseRecord()
        seen = self.cache.seen(key)
        mine = LeaseRecord(node=self._node_id, instance=self._instance, acquired_at=time.time())
        sent = time.monotonic()
        try:
            if seen is None:
                revision = await self._kv.create(key, _encoder.encode(mine))
            else:
                revision = await self._kv.update(key, _encoder.encode(mine), last=seen.revision)
        except KeyWrongLastSequenceError:
            return None
        with self._guard:
            self._held[partition] = Held(revision, sent + self._ttl, mine)
        return previous

    async def renew(self, kv: KeyValue) -> None:
        """Renew every held lease through `kv` (the heartbeat thread's own connection). A
        lease another node took goes to `take_lost()`; a renewal that fails for another
        reason (NATS unreachable) leaves the lease to lapse, which `valid()` reports."""
        with self._guard:
            held = list(self._held.items())
        await asyncio.gather(*(self._renew_one(kv, p, h) for p, h in held))

    async def _renew_one(self, kv: KeyValue, partition: int, held: Held) -> None:
        with held.lock:  # on the heartbeat thread: blocks only that thread, briefly
            if self._held.get(partition) is not held:
                return  # released meanwhile
            sent = time.monotonic()
            try:
                revision = await kv.update(
                    lease_key(partition), _encoder.encode(held.record), last=held.revision
                )
            except KeyWrongLastSequenceError:
                with self._guard:
                    if self._held.get(partition) is held:
                        del self._held[partition]
                        self._lost.append(partition)
                return
            except Exception as exc:
                log.warning(
                    "lease renewal failed", extra={"partition": partition, "error": repr(exc)}
                )
                return
            held.revision, held.valid_until = revision, sent + self._ttl

    async def release(self, partition: int, *, stop_requested_at: float, snapshot_seq: int) -> None:
        """Mark the lease free for the next owner (only if it is still ours)."""
        held = self._held.get(partition)
        if held is None:
            return
        await asyncio.to_thread(held.lock.acquire)  # never block the node's loop on it
        try:
            with self._guard:
                self._held.pop(partition, None)
            await self._mark_released(partition, held, stop_requested_at, snapshot_seq)
        finally:
            held.lock.release()

    async def _mark_released(
        self, partition: int, held: Held, stop_requested_at: float, snapshot_seq: int
    ) -> None:
        released = LeaseRecord(
            released_at=time.time(), stop_requested_at=stop_requested_at, snapshot_seq=snapshot_seq
        )
        try:
            await self._kv.update(
                lease_key(partition), _encoder.encode(released), last=held.revision
            )
        except KeyWrongLastSequenceError:
            log.warning("lease was taken before release", extra={"partition": partition})
        except Exception as exc:  # NATS unreachable: the lease expires on its own
            log.warning(
                "lease release failed; it will expire",
                extra={"partition": partition, "error": repr(exc)},
            )

    def forget(self, partition: int) -> None:
        """Stop renewing a lease that lapsed; it is reacquired through `acquire`."""
        with self._guard:
            self._held.pop(partition, None)
