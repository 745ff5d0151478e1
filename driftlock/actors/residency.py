"""The stream actors a node holds in memory, across all its partitions, least recently used
first.

Memory on a node is bounded by the actors in memory, not by the streams it has ever seen: an
actor leaves when it has been idle for `passivate_after_s`, and when more than
`max_active_actors` are in memory the least recently used one leaves for the newcomer.
Keeping the order costs one `move_to_end` per stream and batch, never one per point.

Leaving is always safe, whichever worker's actor leaves: a partition worker keeps its own
references to the actors of every batch it has not yet seen committed and takes such an actor
back from there (`readmit`), so an actor read back from LMDB is never behind the one that
left. Actors are held per worker instance (`owner`), as if each worker had its own map: a
worker that replaces a failed one never sees its predecessor's actors, which may hold updates
that were never committed, and the owner's actors leave when it stops.

After a sweep frees many actors, glibc keeps their memory (a detector state is a score of
few-kB `bytes` objects, below the mmap threshold, scattered over the heap), and resident
memory would never go down: `malloc_trim` hands the free pages back to the system.
"""

import ctypes
import ctypes.util
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from driftlock.actors.actor import StreamActor

log = logging.getLogger("driftlock.residency")

ActorKey = tuple[int, str, str]
"""(owner, tenant, metric)"""

SWEEP_INTERVAL_S = 1.0
TRIM_AFTER_ACTORS = 1000
"""Freed actors (≈25 kB each) since the last trim that make the next sweep trim the heap."""


@dataclass(frozen=True, slots=True)
class ResidencyStatistics:
    active: int
    max_active: int
    created: int
    """Actors of streams seen for the first time."""
    restored: int
    """Actors brought back from LMDB."""
    restore_seconds: float
    """Spent reading and decoding them."""
    evicted_limit: int
    evicted_idle: int
    trims: int


class ActiveActors:
    def __init__(
        self,
        *,
        max_active: int,
        idle_s: float,
        clock: Callable[[], float] = time.monotonic,
        release: Callable[[], None] | None = None,
    ) -> None:
        self._max_active, self._idle_s, self._clock = max_active, idle_s, clock
        self._release = release if release is not None else release_free_memory
        self._lru: OrderedDict[ActorKey, StreamActor] = OrderedDict()
        self._per_owner: dict[int, int] = {}
        self._owners = itertools.count(1)
        self._last_sweep = clock()
        self._freed_since_trim = 0
        self._created = self._restored = 0
        self._restore_s = 0.0
        self._evicted_limit = self._evicted_idle = 0
        self._trims = 0

    def __len__(self) -> int:
        return len(self._lru)

    def owner(self) -> int:
        """A new owner id, one per partition worker instance."""
        return next(self._owners)

    def active(self, owner: int) -> int:
        return self._per_owner.get(owner, 0)

    def statistics(self) -> ResidencyStatistics:
        return ResidencyStatistics(
            active=len(self._lru),
            max_active=self._max_active,
            created=self._created,
            restored=self._restored,
            restore_seconds=self._restore_s,
            evicted_limit=self._evicted_limit,
            evicted_idle=self._evicted_idle,
            trims=self._trims,
        )

    def get(self, owner: int, tenant: str, metric: str) -> StreamActor | None:
        """The actor if it is in memory, now the most recently used."""
        key = (owner, tenant, metric)
        actor = self._lru.get(key)
        if actor is not None:
            self._lru.move_to_end(key)
            actor.last_active = self._clock()
        return actor

    def add(self, owner: int, actor: StreamActor, *, restored_in: float | None) -> None:
        """Hold a new actor, or one restored from LMDB in `restored_in` seconds; beyond the
        limit the least recently used leaves (committed already, or held by the batch in hand
        until it commits)."""
        if restored_in is not None:
            self._restored += 1
            self._restore_s += restored_in
        else:
            self._created += 1
        self._hold(owner, actor)

    def readmit(self, owner: int, actor: StreamActor) -> None:
        """Hold again an actor that left while its worker still had it (an unfinished
        commit): neither created nor restored."""
        self._hold(owner, actor)

    def _hold(self, owner: int, actor: StreamActor) -> None:
        actor.last_active = self._clock()
        self._lru[(owner, actor.tenant, actor.metric)] = actor
        self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
        while len(self._lru) > self._max_active:
            self._pop_oldest()
            self._evicted_limit += 1

    def drop(self, owner: int) -> int:
        """Forget every actor of an owner (its worker stops)."""
        if not self._per_owner.get(owner):
            return 0
        keys = [k for k in self._lru if k[0] == owner]
        for key in keys:
            del self._lru[key]
        del self._per_owner[owner]
        self._freed(len(keys))
        return len(keys)

    def passivate_idle(self) -> int:
        """At most once a second: idle actors leave memory, oldest first. Returns how many."""
        now = self._clock()
        if now - self._last_sweep < SWEEP_INTERVAL_S:
            return 0
        self._last_sweep = now
        horizon = now - self._idle_s
        gone = 0
        while self._lru:
            oldest = next(iter(self._lru.values()))
            if oldest.last_active >= horizon:
                break
            self._pop_oldest()
            gone += 1
        self._evicted_idle += gone
        self._freed(gone)
        return gone

    def _pop_oldest(self) -> None:
        (owner, _, _), _ = self._lru.popitem(last=False)
        left = self._per_owner[owner] - 1
        if left:
            self._per_owner[owner] = left
        else:
            del self._per_owner[owner]

    def _freed(self, actors: int) -> None:
        self._freed_since_trim += actors
        if self._freed_since_trim < TRIM_AFTER_ACTORS:
            return
        self._freed_since_trim = 0
        started = time.perf_counter()
        self._release()
        self._trims += 1
        log.debug(
            "heap trimmed",
            extra={"active": len(self._lru), "seconds": round(time.perf_counter() - started, 4)},
        )


def _malloc_trim() -> Callable[[], None] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to hand back this way
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def release() -> None:
        trim(0)

    return release


_trim = _malloc_trim()


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc only; elsewhere a no-op)."""
    if _trim is not None:
        _trim()
