"""The operator's view of the cluster, read straight from the buckets: members, who owns each
partition, its lag and the age of its last snapshot. Used by `driftlock cluster status` and
the gateway's `GET /v1/cluster`."""

import asyncio
import time
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError

from driftlock.cluster.records import DrainRecord, LeaseRecord, MemberRecord, PartitionLoad
from driftlock.cluster.snapshots import Snapshots


async def _entries(js: JetStreamContext, bucket: str) -> dict[str, bytes]:
    """Every live key of a bucket with its value. The keys come from the stream's subjects,
    not from `KeyValue.keys()`: nats-py's key watcher ends as soon as its new consumer reports
    nothing pending, which can be while the keys are still in flight to it; on a three-server
    cluster 5 of 200 fresh reads of a 64-key bucket came back empty that way."""
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        return {}
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    found = {}
    for subject in info.state.subjects or {}:
        key = subject.removeprefix(prefix)
        try:
            entry = await kv.get(key)
        except NotFoundError:  # deleted or purged: the subject keeps its marker
            continue
        if entry.value:
            found[key] = entry.value
    return found


async def _snapshots(js: JetStreamContext, prefix: str) -> Snapshots | None:
    snapshots = Snapshots(js, f"{prefix}_snapshots")
    try:
        await snapshots.open(create=False)
    except BucketNotFoundError:
        return None
    return snapshots


async def cluster_status(
    js: JetStreamContext, prefix: str, partitions: int, member_ttl_s: float
) -> dict[str, Any]:
    now = time.time()
    members = [
        msgspec.json.decode(v, type=MemberRecord)
        for v in (await _entries(js, f"{prefix}_members")).values()
    ]
    drains = {
        k: msgspec.json.decode(v, type=DrainRecord)
        for k, v in (await _entries(js, f"{prefix}_drains")).items()
    }
    leases = {
        int(k.split(".", 1)[1]): msgspec.json.decode(v, type=LeaseRecord)
        for k, v in (await _entries(js, f"{prefix}_leases")).items()
    }
    snapshots = await _snapshots(js, prefix)
    loads: dict[int, PartitionLoad] = {}
    for m in members:
        loads.update(m.partitions)
    # A chain is up to 17 sequential reads: the partitions' chains are read side by side.
    infos = (
        await asyncio.gather(*(snapshots.info(p) for p in range(partitions)))
        if snapshots is not None
        else [None] * partitions
    )
    table = []
    for p, info in enumerate(infos):
        lease = leases.get(p, LeaseRecord())
        load = loads.get(p, PartitionLoad())
        table.append(
            {
                "partition": p,
                "owner": lease.node or None,
                "last_applied_seq": load.last_applied_seq,
                "lag": load.lag,
                "snapshot_seq": info.last_applied_seq if info else None,
                "snapshot_age_s": round(now - info.taken_at, 1) if info else None,
            }
        )
    return {
        "members": [
            {
                "id": m.id,
                "address": m.address,
                "live": now - m.heartbeat_at <= member_ttl_s,
                "draining": m.id in drains,
                "weight": m.weight,
                "started_at": m.started_at,
                "heartbeat_age_s": round(now - m.heartbeat_at, 1),
                "partitions": sorted(p for p, lease in leases.items() if lease.node == m.id),
                "active_actors": m.active_actors,
            }
            for m in sorted(members, key=lambda m: m.id)
        ],
        "partitions": table,
        "unowned": [row["partition"] for row in table if row["owner"] is None],
    }


PARTITION_HEADER = (
    "PARTITION  OWNER                  APPLIED_SEQ  LAG     SNAPSHOT_SEQ  SNAPSHOT_AGE"
)


def format_status(status: dict[str, Any]) -> str:
    lines = ["MEMBER                 LIVE  DRAIN  WEIGHT  PARTITIONS  ACTORS  HEARTBEAT"]
    for m in status["members"]:
        lines.append(
            f"{m['id']:<22} {'yes' if m['live'] else 'no':<5} {'yes' if m['draining'] else '':<6}"
            f" {m['weight']:<7g} {len(m['partitions']):<11} {m['active_actors']:<7}"
            f" {m['heartbeat_age_s']}s ago"
        )
    lines += ["", PARTITION_HEADER]
    for row in status["partitions"]:
        age = f"{row['snapshot_age_s']}s" if row["snapshot_age_s"] is not None else "-"
        snapshot = row["snapshot_seq"] if row["snapshot_seq"] is not None else "-"
        lines.append(
            f"{row['partition']:<10} {row['owner'] or '-':<22} {row['last_applied_seq']:<12}"
            f" {row['lag']:<7} {snapshot:<13} {age}"
        )
    if status["unowned"]:
        lines += ["", f"unowned partitions: {status['unowned']}"]
    return "\n".join(lines)
