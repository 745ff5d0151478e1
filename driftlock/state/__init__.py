"""Node-local state: one LMDB environment, keys prefixed by partition (DESIGN §4)."""

from driftlock.state.records import ActorRecord, PartitionMeta
from driftlock.state.store import StateStore

__all__ = ["ActorRecord", "PartitionMeta", "StateStore"]
