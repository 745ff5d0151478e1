"""Real node processes on a 3-server NATS cluster (streams and buckets at 3 replicas) on
loopback, under steady ingest: a node joins, one is stopped with SIGTERM (handoff), one is
killed with kill -9 (failover), the rest restart one by one. At the end every event was
applied exactly once: states and anomalies equal a single-node run over the same events, no
anomaly id reached subscribers twice, and no partition ran on two nodes at once for longer
than a lease period."""

import asyncio
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import nats
import numpy as np
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from driftlock.bus.nats_cluster import ManagedNatsCluster
from driftlock.bus.server import ManagedNatsServer
from driftlock.bus.subjects import Subjects
from driftlock.state import ActorRecord, StateStore
from tests.processes import NodeProcess

PARTITIONS = 16
LEASE_S = 2.0
FAST = (
    *("--lease-ttl-s", str(LEASE_S), "--member-ttl-s", str(LEASE_S)),
    *("--snapshot-interval-s", "1", "--max-concurrent-moves", "4"),
)
T0 = 1_732_550_400.0
STREAMS = [(f"t{i % 4}", f"m{i}") for i in range(48)]
MESSAGES_PER_STREAM = 60
POINTS_PER_MESSAGE = 10
TOTAL_POINTS = len(STREAMS) * MESSAGES_PER_STREAM * POINTS_PER_MESSAGE
TENANTS = sorted({t for t, _ in STREAMS})

Records = dict[tuple[str, str], ActorRecord]


def make_events() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(5)
    n = MESSAGES_PER_STREAM * POINTS_PER_MESSAGE
    series = {}
    for k, stream in enumerate(STREAMS):
        values = 50 + rng.normal(0, 2, n)
        values[150 + 3 * k :: 97] += 40
        values[400 + k :] -= 25
        series[stream] = values
    events = []
    for m in range(MESSAGES_PER_STREAM):
        lo = m * POINTS_PER_MESSAGE
        for tenant, metric in STREAMS:
            chunk = series[(tenant, metric)][lo : lo + POINTS_PER_MESSAGE]
            points = [[T0 + lo + i, round(float(v), 6)] for i, v in enumerate(chunk)]
            events.append((Subjects().ingest(tenant, metric), json.dumps(points).encode()))
    return events


async def lease_owners(js: JetStreamContext) -> dict[int, str]:
    kv = await js.key_value("dl_leases")
    owners = {}
    for p in range(PARTITIONS):
        try:
            entry = await kv.get(f"p.{p}")
        except Exception:
            continue
        if entry.value:
            record = json.loads(entry.value)
            if record.get("node"):
                owners[p] = record["node"]
    return owners


async def applied_points(nc: Client) -> int:
    """Points applied cluster-wide, asked of the owners (`dl.q.metrics.<tenant>`); -1 until
    the replies cover every partition."""
    total, covered = 0, set()
    for tenant in TENANTS:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(f"dl.q.metrics.{tenant}", b"", reply=inbox)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=max(deadline - time.monotonic(), 0.01))
            except Exception:
                break
            body = json.loads(msg.data)
            covered |= set(body["partitions"])
            total += sum(m["points"] for m in body["metrics"])
        await sub.unsubscribe()
    return total if len(covered) == PARTITIONS * 1 and covered == set(range(PARTITIONS)) else -1


class Producer:
    """Publishes the events at a steady pace with JetStream acks: ingest must never fail."""

    def __init__(self, js: JetStreamContext, events: list[tuple[str, bytes]], seconds: float):
        self._js, self._events, self._pause = js, events, seconds / len(events)
        self.published = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for subject, payload in self._events:
            ack = await self._js.publish(subject, payload, timeout=10)
            assert ack.seq > 0
            self.published += 1
            await asyncio.sleep(self._pause)


def read_final_records(data_dirs: list[Path]) -> Records:
    """Per partition, the copy of the node that applied the most (the last owner's)."""
    best: dict[int, tuple[int, Records]] = {}
    for data_dir in data_dirs:
        store = StateStore(data_dir / "state")
        try:
            for p in range(PARTITIONS):
                seq = store.read_meta(p).last_applied_seq
                if seq > best.get(p, (-1, {}))[0]:
                    records = {(t, m): r for t, m, r in store.iter_actors(p)}
                    best[p] = (seq, records)
        finally:
            store.close()
    return {k: v for _, records in best.values() for k, v in records.items()}


def ownership_intervals(logs: list[Path], killed: dict[str, float]) -> dict[int, list[Any]]:
    """(node, start, end) per partition from the nodes' `partition started/stopped` lines;
    a killed node's partitions end when it was killed."""
    open_since: dict[tuple[str, int], float] = {}
    intervals: dict[int, list[Any]] = defaultdict(list)
    lines = []
    for log in logs:
        for line in log.read_text().splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("msg") in ("partition started", "partition stopped"):
                    lines.append(entry)
                elif entry.get("msg") == "node started":
                    # A restart after kill -9: close what the dead process held.
                    for (node, p), start in list(open_since.items()):
                        if node == entry.get("node_id") and node in killed:
                            intervals[p].append((node, start, killed[node]))
                            del open_since[(node, p)]
    for entry in sorted(lines, key=lambda e: e["ts"]):
        key = (entry["node_id"], entry["partition"])
        if entry["msg"] == "partition started":
            open_since[key] = entry["ts"]
        elif key in open_since:
            intervals[key[1]].append((key[0], open_since.pop(key), entry["ts"]))
    for (node, p), start in open_since.items():
        intervals[p].append((node, start, killed.get(node, time.time())))
    return intervals


def content(anomaly: dict[str, Any]) -> tuple[Any, ...]:
    return (
        anomaly["tenant"],
        anomaly["metric"],
        anomaly["ts"],
        anomaly["value"],
        anomaly["score"],
        anomaly["kind"],
    )


async def reference_run(base: Path) -> tuple[Records, list[dict[str, Any]]]:
    server = ManagedNatsServer(base_dir=base / "nats", subjects=Subjects(), partitions=PARTITIONS)
    await server.start()
    nc = await nats.connect(server.url)
    received: list[dict[str, Any]] = []

    async def on_anomaly(msg: Msg) -> None:
        received.append(json.loads(msg.data))

    node = NodeProcess(
        nats_url=server.url, data_dir=base / "ref", partitions=PARTITIONS, name="ref", extra=FAST
    )
    try:
        await nc.subscribe("dl.anomaly.>", cb=on_anomaly)
        await node.start()
        js = nc.jetstream()
        for subject, payload in make_events():
            await js.publish(subject, payload)

        async def done() -> bool:
            return await applied_points(nc) == TOTAL_POINTS

        await eventually_async(done, timeout=90)
        assert node.terminate() == 0
        await asyncio.sleep(0.3)
    finally:
        node.ensure_stopped()
        await nc.close()
        server.stop()
    return read_final_records([base / "ref"]), received


async def eventually_async(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


@pytest.mark.timeout(400)
async def test_join_handoff_failover_and_rolling_restart_lose_and_duplicate_nothing(
    tmp_path: Path,
) -> None:
    cluster = ManagedNatsCluster(
        base_dir=tmp_path / "nats", subjects=Subjects(), partitions=PARTITIONS
    )
    url = await cluster.start()
    nc = await nats.connect(url.split(","))
    js = nc.jetstream()
    received: list[dict[str, Any]] = []

    async def on_anomaly(msg: Msg) -> None:
        received.append(json.loads(msg.data))

    nodes = {
        name: NodeProcess(
            nats_url=url,
            data_dir=tmp_path / name,
            partitions=PARTITIONS,
            name=name,
            extra=(*FAST, "--replicas", "3"),
        )
        for name in "abcd"
    }
    killed: dict[str, float] = {}

    async def settled(live: set[str]) -> None:
        async def check() -> bool:
            owners = await lease_owners(js)
            return len(owners) == PARTITIONS and set(owners.values()) == live

        await eventually_async(check, timeout=30)

    producer = Producer(js, make_events(), seconds=30)
    try:
        await nc.subscribe("dl.anomaly.>", cb=on_anomaly)
        for name in "abc":
            await nodes[name].start()
        await settled({"a", "b", "c"})
        producer.start()
        await asyncio.sleep(2)

        await nodes["d"].start()  # join: d takes its share
        await settled({"a", "b", "c", "d"})
        assert nodes["b"].terminate() == 0  # graceful handoff
        await settled({"a", "c", "d"})
        nodes["c"].kill()  # failover after the lease expires
        killed["c"] = time.time()
        await settled({"a", "d"})
        for name in "ad":  # rolling restart
            assert nodes[name].terminate() == 0
            await nodes[name].start()
            await settled({"a", "d"})
        assert producer.task is not None and not producer.task.done(), "ingest ran throughout"
        await producer.task

        async def done() -> bool:
            return await applied_points(nc) == TOTAL_POINTS

        await eventually_async(done, timeout=90)
        for name in "ad":
            assert nodes[name].terminate() == 0
        await asyncio.sleep(0.3)
    finally:
        for node in nodes.values():
            node.ensure_stopped()
        await nc.close()
        cluster.stop()

    records = read_final_records([tmp_path / name for name in "abcd"])
    reference, reference_anomalies = await reference_run(tmp_path / "reference")
    assert sum(r.points for r in records.values()) == TOTAL_POINTS
    assert records == reference  # detector state included: each event applied exactly once

    ids = Counter(a["id"] for a in received)
    assert [i for i, n in ids.items() if n > 1] == []
    assert len(reference_anomalies) > 40
    assert sorted(map(content, received)) == sorted(map(content, reference_anomalies))

    intervals = ownership_intervals([n.log_path for n in nodes.values()], killed)
    assert set(intervals) == set(range(PARTITIONS))
    for p, spans in intervals.items():
        for i, (node_a, start_a, end_a) in enumerate(spans):
            for node_b, start_b, end_b in spans[i + 1 :]:
                if node_a != node_b:
                    overlap = min(end_a, end_b) - max(start_a, start_b)
                    assert overlap < LEASE_S, (p, node_a, node_b, overlap)
    moved = [p for p, spans in intervals.items() if len({n for n, _, _ in spans}) > 1]
    assert len(moved) >= PARTITIONS // 2, "partitions really moved between nodes"
