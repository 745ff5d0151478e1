"""The LMDB environment of a node.

Two databases: `meta` (key `<partition:05d>/`) and `actors` (key
`<partition:05d>/<tenant>/<metric>`). Ids cannot contain `/`, so a partition is one key range
of each that can be exported, dropped or restored on its own.

All writes go through one writer thread that merges whatever commits are waiting into one
transaction (group commit): the event loop never blocks on fsync, and at high load many
partitions share one fsync.

The store also tracks, per partition, which actors changed since the partition was last
exported (`export_partition`, `export_changes`): a snapshot after the first is a delta of
those actors, and holds every change up to the sequence it reads (`_track` says how).

Reads go through LMDB's memory map, and every page read stays mapped: resident memory of the
process would grow to the size of the database (16 GB for a million streams) as snapshots
export partitions and actors come back. Those pages are page cache, not heap, but they count
as resident, so the store unmaps them (`madvise(MADV_DONTNEED)` on the read-only shared map:
the next read faults them back in from the page cache) after an export and after every
`RELEASE_AFTER_BYTES` read.
"""

import asyncio
import ctypes
import ctypes.util
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lmdb

from driftlock.state.records import ActorRecord, PartitionMeta, decode_actor, decode_meta, encode

log = logging.getLogger("driftlock.state")

RELEASE_AFTER_BYTES = 256 << 20
MAX_TRACKED_CHANGES = 200_000
"""Changed actors remembered per partition; beyond it the next snapshot is a full one (a
delta that large saves little, and the set would grow with the partition)."""
MADV_DONTNEED = 4

Puts = dict[bytes, bytes]
"""Actor key → encoded record."""


def partition_prefix(partition: int) -> bytes:
    return b"%05d/" % partition


def actor_key(partition: int, tenant: str, metric: str) -> bytes:
    return partition_prefix(partition) + f"{tenant}/{metric}".encode()


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    size_bytes: int
    actors: int
    commits: int
    transactions: int


class StateStore:
    def __init__(self, path: Path, *, map_size: int = 1 << 36, sync: bool = True) -> None:
        path.mkdir(parents=True, exist_ok=True)
        # metasync=False: the data pages are flushed on commit, the meta page later; a system
        # crash may undo the last commit but never corrupts, and replay redoes that commit.
        self._env = lmdb.open(
            str(path), map_size=map_size, sync=sync, metasync=False, readahead=False, max_dbs=2
        )
        self._data_file = str((path / "data.mdb").resolve())
        self._read_bytes = 0
        self._meta = self._env.open_db(b"meta")
        self._actors = self._env.open_db(b"actors")
        self._queue: queue.SimpleQueue[_Commit | None] = queue.SimpleQueue()
        self._commits = 0
        self._transactions = 0
        self._changes_lock = threading.Lock()
        self._changed: dict[int, set[bytes]] = {}
        self._writing: list[_Commit] = []
        """Keys (without the partition prefix) written since the partition's last export;
        a partition missing here has changes nobody tracked (never exported, restored)."""
        self._writer = threading.Thread(target=self._write_loop, name="lmdb-writer", daemon=True)
        self._writer.start()

    # -- reads (event loop; LMDB reads are lock-free and never block on writers) --

    def read_meta(self, partition: int) -> PartitionMeta:
        with self._env.begin(db=self._meta) as txn:
            data = txn.get(partition_prefix(partition))
        return decode_meta(data) if data is not None else PartitionMeta()

    def read_actor(self, partition: int, tenant: str, metric: str) -> ActorRecord | None:
        return self.read_actors(partition, [(tenant, metric)])[0]

    def read_actors(
        self, partition: int, streams: Sequence[tuple[str, str]]
    ) -> list[ActorRecord | None]:
        """The records of these (tenant, metric) streams (None: not stored), in one
        transaction and one `getmulti` call. (py-lmdb lets the GIL go for each key it looks
        up, so call it off the event loop when other threads are busy.)"""
        keys = [actor_key(partition, t, m) for t, m in streams]
        with self._env.begin(db=self._actors) as txn:
            found = dict(txn.cursor().getmulti(keys))
        self._read_bytes += sum(map(len, found.values()))
        if self._read_bytes >= RELEASE_AFTER_BYTES:
            self.release_mapped_pages()
        return [None if (data := found.get(key)) is None else decode_actor(data) for key in keys]

    def iter_actors(
        self, partition: int, tenant: str | None = None
    ) -> Iterator[tuple[str, str, ActorRecord]]:
        """Actors of a partition (of one tenant only, if given), in key order."""
        prefix = partition_prefix(partition)
        scan = prefix + f"{tenant}/".encode() if tenant is not None else prefix
        with self._env.begin(db=self._actors) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(scan):
                return
            for key, value in cursor:
                if not key.startswith(scan):
                    break
                tenant, metric = key[len(prefix) :].decode().split("/", 1)
                yield tenant, metric, decode_actor(value)

    def export_partition(self, partition: int) -> tuple[int, list[tuple[bytes, bytes]]]:
        """The partition's `last_applied_seq` and every actor record (keys without the
        partition prefix), read in one transaction, so they always belong together. Tracks
        the partition's changes from here on, for `export_changes`."""
        prefix = partition_prefix(partition)
        with self._changes_lock:
            txn = self._env.begin()
            self._start_tracking(partition)
        try:
            seq = self._read_seq(txn, partition)
            cursor = txn.cursor(db=self._actors)
            records: list[tuple[bytes, bytes]] = []
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    records.append((bytes(key[len(prefix) :]), bytes(value)))
        finally:
            txn.abort()
        self.release_mapped_pages()
        return seq, records

    def export_changes(self, partition: int) -> tuple[int, list[tuple[bytes, bytes]]] | None:
        """The partition's `last_applied_seq` and the records of the actors changed since
        its previous export, read in one transaction; None when those changes are unknown
        (never exported since the store opened, restored since, or too many to track)."""
        prefix = partition_prefix(partition)
        with self._changes_lock:
            keys = self._changed.get(partition)
            if keys is None:
                return None
            txn = self._env.begin()
            self._start_tracking(partition)
        try:
            seq = self._read_seq(txn, partition)
            records = []
            for key in sorted(keys):
                value = txn.get(prefix + key, db=self._actors)
                if value is not None:  # actors leave only with a restore, which untracks
                    records.append((key, bytes(value)))
        finally:
            txn.abort()
        self.release_mapped_pages()
        return seq, records

    def _read_seq(self, txn: "lmdb.Transaction", partition: int) -> int:
        meta = txn.get(partition_prefix(partition), db=self._meta)
        return decode_meta(bytes(meta)).last_applied_seq if meta is not None else 0

    def release_mapped_pages(self) -> int:
        """Unmap the database pages read so far (they stay in the page cache); returns the
        bytes of map given back, 0 where madvise is not available."""
        self._read_bytes = 0
        if _madvise is None:
            return 0
        released = 0
        for start, end in _mappings(self._data_file):
            if _madvise(start, end - start, MADV_DONTNEED) == 0:
                released += end - start
        return released

    def statistics(self) -> StoreStatistics:
        info, stat = self._env.info(), self._env.stat()
        with self._env.begin() as txn:
            actors = txn.stat(self._actors)["entries"]
        return StoreStatistics(
            size_bytes=(info["last_pgno"] + 1) * stat["psize"],
            actors=actors,
            commits=self._commits,
            transactions=self._transactions,
        )

    # -- writes (writer thread) --

    async def commit(self, partition: int, actors: Puts, last_applied_seq: int) -> None:
        """Write the actors' records and the partition's new last applied sequence atomically."""
        await self.submit(partition, actors, last_applied_seq)

    def submit(self, partition: int, actors: Puts, last_applied_seq: int) -> "asyncio.Future[None]":
        """`commit` without waiting: queued at once, so commits submitted one after the other
        are written in that order; the future is done when this one is durable."""
        return self._enqueue(partition, actors, last_applied_seq, replace=False)

    async def replace_partition(
        self, partition: int, records: list[tuple[bytes, bytes]], last_applied_seq: int
    ) -> None:
        """Make the partition exactly this snapshot (as `export_partition` returns it):
        records it does not contain are dropped, in the same transaction."""
        prefix = partition_prefix(partition)
        actors = {prefix + key: value for key, value in records}
        await self._enqueue(partition, actors, last_applied_seq, replace=True)

    def _enqueue(
        self, partition: int, actors: Puts, last_applied_seq: int, *, replace: bool
    ) -> "asyncio.Future[None]":
        meta = encode(PartitionMeta(last_applied_seq=last_applied_seq))
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Commit(partition_prefix(partition), meta, actors, loop, done, replace))
        return done

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join()
        self._env.close()

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                group.append(item)
            self._write_group(group)

    def _write_group(self, group: list["_Commit"]) -> None:
        try:
            self._track(group)
            try:
                with self._env.begin(write=True) as txn:
                    for commit in group:
                        if commit.replace:
                            _delete_range(txn, self._actors, commit.meta_key)
                        for key, value in commit.actors.items():
                            txn.put(key, value, db=self._actors)
                        txn.put(commit.meta_key, commit.meta, db=self._meta)
            finally:
                self._written()
        except Exception as exc:  # surfaces in every waiting worker, which stops cleanly
            for commit in group:
                commit.loop.call_soon_threadsafe(_fail, commit.done, exc)
            return
        self._transactions += 1
        self._commits += len(group)
        for commit in group:
            commit.loop.call_soon_threadsafe(_succeed, commit.done)

    def _track(self, group: list["_Commit"]) -> None:
        """Before committing the group: note its keys, and hold it as the one being written
        until `_written`. The lock is never held while committing (an fsync; the event loop
        takes the lock too), so an export may come while the group is half done: it reads
        the group's old or new values, and its fresh set starts with the group's keys
        (`_fresh_changes`), so the next delta has them whichever it was."""
        with self._changes_lock:
            self._writing = group
            for commit in group:
                partition = _partition_of(commit)
                keys = self._changed.get(partition)
                if keys is None:
                    continue
                if commit.replace or len(keys) + len(commit.actors) > MAX_TRACKED_CHANGES:
                    del self._changed[partition]
                    continue
                keys.update(_stripped(commit))

    def _written(self) -> None:
        with self._changes_lock:
            for commit in self._writing:
                if commit.replace:  # an export during the restore must not track it
                    self._changed.pop(_partition_of(commit), None)
            self._writing = []

    def _start_tracking(self, partition: int) -> None:
        """Under the changes lock, as an export opens its read transaction."""
        keys: set[bytes] = set()
        for commit in self._writing:
            if _partition_of(commit) != partition:
                continue
            if commit.replace:
                self._changed.pop(partition, None)
                return
            keys.update(_stripped(commit))
        self._changed[partition] = keys


def _partition_of(commit: "_Commit") -> int:
    return int(commit.meta_key[:-1])


def _stripped(commit: "_Commit") -> Iterator[bytes]:
    cut = len(commit.meta_key)
    return (key[cut:] for key in commit.actors)


@dataclass(slots=True)
class _Commit:
    meta_key: bytes
    meta: bytes
    actors: Puts
    loop: asyncio.AbstractEventLoop
    done: "asyncio.Future[None]"
    replace: bool = False


def _delete_range(txn: "lmdb.Transaction", db: "lmdb._Database", prefix: bytes) -> None:
    cursor = txn.cursor(db=db)
    if not cursor.set_range(prefix):
        return
    while bytes(cursor.key()).startswith(prefix):
        if not cursor.delete():  # moves to the next record; False once none is left
            break


def _mappings(path: str) -> list[tuple[int, int]]:
    """Address ranges where this process maps `path`."""
    found = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if line.rstrip().endswith(path):
                    start, end = line.split(None, 1)[0].split("-")
                    found.append((int(start, 16), int(end, 16)))
    except OSError:  # no procfs: nothing to give back this way
        pass
    return found


def _load_madvise() -> "ctypes._FuncPointer | None":
    try:
        madvise = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).madvise
    except (OSError, AttributeError, TypeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _load_madvise()


def _succeed(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


def _fail(future: "asyncio.Future[None]", exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
