"""What nodes write into the cluster's KV buckets. JSON, so operators can read them with
`nats kv get`; new fields get defaults so nodes of two versions can share a cluster."""

import msgspec


class PartitionLoad(msgspec.Struct, kw_only=True):
    last_applied_seq: int = 0
    lag: int = 0
    snapshot_seq: int = 0
    snapshot_at: float = 0.0


class MemberRecord(msgspec.Struct, kw_only=True):
    """A node's heartbeat, written every heartbeat interval to `members/node.<id>`."""

    id: str
    instance: str
    address: str = ""
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    weight: float = 1.0
    draining: bool = False
    partitions: dict[int, PartitionLoad] = msgspec.field(default_factory=dict)
    active_actors: int = 0


class DrainRecord(msgspec.Struct, kw_only=True):
    """`drains/<id>`: written by `driftlock cluster drain`, the node hands off
    everything it owns and takes nothing until the record is deleted."""

    requested_at: float = 0.0


class LeaseRecord(msgspec.Struct, kw_only=True):
    """`leases/p.<n>`. An empty `node` means released: the next owner may take it at once.
    `released_at` and `snapshot_seq` let the next owner measure the handoff pause and know
    which snapshot to restore."""

    node: str = ""
    instance: str = ""
    acquired_at: float = 0.0
    released_at: float = 0.0
    stop_requested_at: float = 0.0
    snapshot_seq: int = 0


def member_key(node_id: str) -> str:
    return f"node.{node_id}"


def lease_key(partition: int) -> str:
    return f"p.{partition}"
