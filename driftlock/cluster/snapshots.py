"""Partition snapshots in the Object Store bucket `<prefix>_snapshots` (DESIGN §3): the
state of every actor of a partition with the `last_applied_seq` it belongs to. An owner
uploads one periodically and when it hands the partition off; the next owner restores it
and replays from the following sequence.

A snapshot is a chain: a base (`partition-<p>`, every actor) and up to `MAX_DELTAS` deltas
(`partition-<p>-delta-<k>`, the actors changed since the object before). Full snapshots
did not scale: at 100,000 streams a round exported and uploaded gigabytes, while a stream
that sent one point since changed one record. Each delta names its base and the sequence
it follows; a restore reads the base and then deltas while they follow on, so a delta left
over from an older chain, or a missing one, ends the chain there (replay covers the rest).
An owner starts a new base when its chain is long or its deltas outweigh the base, and
whenever it cannot know what changed: first upload after taking a partition, after a
restore, or after a failed upload."""

import asyncio
import logging
import time
import zlib
from dataclasses import dataclass

import msgspec
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.object_store import ObjectStore

from driftlock.bus.objects import read_object
from driftlock.state.store import StateStore

log = logging.getLogger("driftlock.cluster")

SNAPSHOT_VERSION = 1
MAX_DELTAS = 16


class PartitionSnapshot(msgspec.Struct, array_like=True):
    version: int
    partition: int
    last_applied_seq: int
    taken_at: float
    records: list[tuple[bytes, bytes]]
    """(actor key within the partition, encoded ActorRecord)"""


class PartitionDelta(msgspec.Struct, array_like=True):
    version: int
    partition: int
    base_taken_at: float
    """The base it belongs to (its `taken_at`)."""
    previous_seq: int
    """The `last_applied_seq` of the object before it in the chain."""
    last_applied_seq: int
    taken_at: float
    records: list[tuple[bytes, bytes]]
    """The actors changed since the object before."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    partition: int
    last_applied_seq: int
    size: int
    taken_at: float


@dataclass(slots=True)
class _Chain:
    """What this node uploaded of a partition's current chain."""

    base_taken_at: float
    base_size: int
    head_seq: int
    deltas: int = 0
    delta_bytes: int = 0


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(PartitionSnapshot)
_delta_decoder = msgspec.msgpack.Decoder(PartitionDelta)


def object_name(partition: int) -> str:
    return f"partition-{partition}"


def delta_name(partition: int, k: int) -> str:
    return f"partition-{partition}-delta-{k}"


def _description(seq: int, taken_at: float, base: float | None = None, previous: int = 0) -> str:
    text = f"last_applied_seq={seq} taken_at={taken_at:.6f}"
    return text if base is None else f"{text} base={base:.6f} previous_seq={previous}"


def _parse_description(text: str | None) -> dict[str, str]:
    return dict(part.split("=", 1) for part in (text or "").split() if "=" in part)


def _seq_and_time(fields: dict[str, str]) -> tuple[int, float]:
    return int(fields.get("last_applied_seq", 0)), float(fields.get("taken_at", 0.0))


class Snapshots:
    def __init__(self, js: JetStreamContext, bucket: str, replicas: int = 1) -> None:
        self._js, self._bucket, self._replicas = js, bucket, replicas
        self._store: ObjectStore | None = None
        self._chains: dict[int, _Chain] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        """One upload or restore of a partition at a time: two uploads at once would both
        take the delta after the chain's head, and one's changes would be in no object."""

    async def open(self, *, create: bool = True) -> None:
        try:
            self._store = await self._js.object_store(self._bucket)
        except BucketNotFoundError:
            if not create:
                raise
            config = ObjectStoreConfig(
                bucket=self._bucket,
                description="DriftLock partition snapshots",
                storage=StorageType.FILE,
                replicas=self._replicas,
            )
            self._store = await self._js.create_object_store(self._bucket, config=config)

    @property
    def store(self) -> ObjectStore:
        assert self._store is not None, "snapshots not opened"
        return self._store

    async def upload(self, state: StateStore, partition: int) -> SnapshotInfo:
        """Export the partition from LMDB and upload it, as a delta on this node's chain when
        it can, else as a new base. An export is one read transaction, so it is consistent
        even while the partition's worker keeps committing."""
        async with self._lock(partition):
            chain = self._chains.get(partition)
            if chain and chain.deltas < MAX_DELTAS and chain.delta_bytes < chain.base_size:
                delta = await self._upload_delta(state, partition, chain)
                if delta is not None:
                    return delta
            return await self._upload_base(state, partition)

    def _lock(self, partition: int) -> asyncio.Lock:
        return self._locks.setdefault(partition, asyncio.Lock())

    async def _upload_base(self, state: StateStore, partition: int) -> SnapshotInfo:
        self._chains.pop(partition, None)
        taken_at = time.time()
        seq, blob = await asyncio.to_thread(_export, state, partition, taken_at)
        meta = ObjectMeta(name=object_name(partition), description=_description(seq, taken_at))
        await self.store.put(object_name(partition), blob, meta=meta)
        self._chains[partition] = _Chain(base_taken_at=taken_at, base_size=len(blob), head_seq=seq)
        return SnapshotInfo(partition, seq, len(blob), taken_at)

    async def _upload_delta(
        self, state: StateStore, partition: int, chain: _Chain
    ) -> SnapshotInfo | None:
        taken_at = time.time()
        exported = await asyncio.to_thread(_export_delta, state, partition, chain, taken_at)
        if exported is None:
            return None
        seq, blob = exported
        name = delta_name(partition, chain.deltas + 1)
        description = _description(seq, taken_at, chain.base_taken_at, chain.head_seq)
        try:
            await self.store.put(name, blob, meta=ObjectMeta(name=name, description=description))
        except BaseException:
            # Those changes are in no object now: only a new base can cover them (a base
            # export also starts the store's change tracking afresh).
            self._chains.pop(partition, None)
            raise
        chain.deltas += 1
        chain.delta_bytes += len(blob)
        chain.head_seq = seq
        return SnapshotInfo(partition, seq, len(blob), taken_at)

    async def info(self, partition: int) -> SnapshotInfo | None:
        """The chain's head: the sequence a restore reaches, the bytes it reads."""
        found = await self._chain(partition)
        if not found:
            return None
        seq, _ = _seq_and_time(found[-1][1])
        _, taken_at = _seq_and_time(found[0][1])
        return SnapshotInfo(partition, seq, sum(i.size or 0 for i, _ in found), taken_at)

    async def _chain(self, partition: int) -> list[tuple[ObjectInfo, dict[str, str]]]:
        """The infos and description fields of the base and the deltas that follow."""
        try:
            base = await self.store.get_info(object_name(partition))
        except NotFoundError:
            return []
        fields = _parse_description(base.description)
        found = [(base, fields)]
        base_taken_at = fields.get("taken_at")
        head_seq = _seq_and_time(fields)[0]
        for k in range(1, MAX_DELTAS + 1):
            try:
                delta = await self.store.get_info(delta_name(partition, k))
            except NotFoundError:
                break
            fields = _parse_description(delta.description)
            if fields.get("base") != base_taken_at or fields.get("previous_seq") != str(head_seq):
                break  # left over from an older chain
            found.append((delta, fields))
            head_seq = _seq_and_time(fields)[0]
        return found

    async def restore_if_newer(self, state: StateStore, partition: int) -> int | None:
        """Replace the local copy of the partition with the snapshot when the snapshot is
        further along; returns the snapshot's sequence if it was restored.

        The local copy may be stale (this node owned the partition before) or newer (this
        node crashed after its last upload). Either is a correct state at its sequence,
        because detection is a deterministic function of the events: the newer one wins and
        replay covers the rest. Called on every acquisition: whatever this node uploaded
        before may have been superseded since, so its next upload is a new base."""
        async with self._lock(partition):
            self._chains.pop(partition, None)
            found = await self._chain(partition)
            if not found:
                return None
            seq, _ = _seq_and_time(found[-1][1])
            if seq <= state.read_meta(partition).last_applied_seq:
                return None
            blobs = [await read_object(self._js, self._bucket, info) for info, _ in found]
            records, seq = await asyncio.to_thread(_combine, partition, blobs)
            await state.replace_partition(partition, records, seq)
            return seq


def _export(state: StateStore, partition: int, taken_at: float) -> tuple[int, bytes]:
    seq, records = state.export_partition(partition)
    snapshot = PartitionSnapshot(SNAPSHOT_VERSION, partition, seq, taken_at, records)
    # Level 1: detector states are float arrays that compress a little; speed matters more.
    return seq, zlib.compress(_encoder.encode(snapshot), 1)


def _export_delta(
    state: StateStore, partition: int, chain: _Chain, taken_at: float
) -> tuple[int, bytes] | None:
    exported = state.export_changes(partition)
    if exported is None:
        return None
    seq, records = exported
    delta = PartitionDelta(
        SNAPSHOT_VERSION, partition, chain.base_taken_at, chain.head_seq, seq, taken_at, records
    )
    return seq, zlib.compress(_encoder.encode(delta), 1)


def _combine(partition: int, blobs: list[bytes]) -> tuple[list[tuple[bytes, bytes]], int]:
    """The base's records overwritten by each delta's, in order, and the last sequence."""
    base = _decode(blobs[0])
    if base.partition != partition:
        raise ValueError(f"snapshot of partition {base.partition} stored as {partition}")
    records, seq = dict(base.records), base.last_applied_seq
    for blob in blobs[1:]:
        delta = _delta_decoder.decode(zlib.decompress(blob))
        if delta.version != SNAPSHOT_VERSION or delta.partition != partition:
            raise ValueError(f"delta of partition {delta.partition} v{delta.version}")
        if delta.previous_seq != seq:
            raise ValueError(f"delta follows {delta.previous_seq}, the chain is at {seq}")
        records.update(delta.records)
        seq = delta.last_applied_seq
    return sorted(records.items()), seq


def _decode(blob: bytes) -> PartitionSnapshot:
    snapshot = _decoder.decode(zlib.decompress(blob))
    if snapshot.version != SNAPSHOT_VERSION:
        raise ValueError(f"snapshot version {snapshot.version} is not {SNAPSHOT_VERSION}")
    return snapshot
