"""Partition snapshots in the Object Store bucket `<prefix>_snapshots` (DESIGN §3): the
state of every actor of a partition with the `last_applied_seq` it belongs to. An owner
uploads one periodically and when it hands the partition off; the next owner restores it
and replays from the following sequence."""

import asyncio
import io
import logging
import time
import zlib
from dataclasses import dataclass

import msgspec
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.object_store import ObjectStore

from driftlock.state.store import StateStore

log = logging.getLogger("driftlock.cluster")

SNAPSHOT_VERSION = 1


class PartitionSnapshot(msgspec.Struct, array_like=True):
    version: int
    partition: int
    last_applied_seq: int
    taken_at: float
    records: list[tuple[bytes, bytes]]
    """(actor key within the partition, encoded ActorRecord)"""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    partition: int
    last_applied_seq: int
    size: int
    taken_at: float


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(PartitionSnapshot)


def object_name(partition: int) -> str:
    return f"partition-{partition}"


def _description(seq: int, taken_at: float) -> str:
    return f"last_applied_seq={seq} taken_at={taken_at:.3f}"


def _parse_description(text: str | None) -> tuple[int, float]:
    fields = dict(part.split("=", 1) for part in (text or "").split() if "=" in part)
    return int(fields.get("last_applied_seq", 0)), float(fields.get("taken_at", 0.0))


class Snapshots:
    def __init__(self, js: JetStreamContext, bucket: str, replicas: int = 1) -> None:
        self._js, self._bucket, self._replicas = js, bucket, replicas
        self._store: ObjectStore | None = None

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
        """Export the partition from LMDB and upload it; the export is one read transaction,
        so it is consistent even while the partition's worker keeps committing."""
        taken_at = time.time()
        seq, blob = await asyncio.to_thread(_export, state, partition, taken_at)
        meta = ObjectMeta(name=object_name(partition), description=_description(seq, taken_at))
        await self.store.put(object_name(partition), blob, meta=meta)
        return SnapshotInfo(partition, seq, len(blob), taken_at)

    async def info(self, partition: int) -> SnapshotInfo | None:
        try:
            found = await self.store.get_info(object_name(partition))
        except NotFoundError:
            return None
        seq, taken_at = _parse_description(found.description)
        return SnapshotInfo(partition, seq, found.size or 0, taken_at)

    async def restore_if_newer(self, state: StateStore, partition: int) -> int | None:
        """Replace the local copy of the partition with the snapshot when the snapshot is
        further along; returns the snapshot's sequence if it was restored.

        The local copy may be stale (this node owned the partition before) or newer (this
        node crashed after its last upload). Either is a correct state at its sequence,
        because detection is a deterministic function of the events: the newer one wins and
        replay covers the rest."""
        found = await self.info(partition)
        local_seq = state.read_meta(partition).last_applied_seq
        if found is None or found.last_applied_seq <= local_seq:
            return None
        sink = io.BytesIO()
        await self.store.get(object_name(partition), writeinto=sink)
        snapshot = await asyncio.to_thread(_decode, sink.getvalue())
        if snapshot.partition != partition:
            raise ValueError(f"snapshot of partition {snapshot.partition} stored as {partition}")
        await state.replace_partition(partition, snapshot.records, snapshot.last_applied_seq)
        return snapshot.last_applied_seq


def _export(state: StateStore, partition: int, taken_at: float) -> tuple[int, bytes]:
    seq, records = state.export_partition(partition)
    snapshot = PartitionSnapshot(SNAPSHOT_VERSION, partition, seq, taken_at, records)
    # Level 1: detector states are float arrays that compress a little; speed matters more.
    return seq, zlib.compress(_encoder.encode(snapshot), 1)


def _decode(blob: bytes) -> PartitionSnapshot:
    snapshot = _decoder.decode(zlib.decompress(blob))
    if snapshot.version != SNAPSHOT_VERSION:
        raise ValueError(f"snapshot version {snapshot.version} is not {SNAPSHOT_VERSION}")
    return snapshot
