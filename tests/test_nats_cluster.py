"""DriftLock on a 3-server NATS cluster with streams and buckets at 3 replicas: killing one
server during ingest loses nothing; processing carries on on the other two."""

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.msg import Msg

from driftlock.bus.connection import connect
from driftlock.bus.nats_cluster import ManagedNatsCluster
from driftlock.bus.subjects import Subjects
from driftlock.cluster.records import LeaseRecord, MemberRecord, lease_key, member_key
from driftlock.cluster.status import cluster_status
from driftlock.errors import NatsServerError
from driftlock.gateway.kvcache import KvCache
from tests.processes import NodeProcess
from tests.test_cluster_e2e import (
    FAST,
    PARTITIONS,
    TOTAL_POINTS,
    applied_points,
    eventually_async,
    make_events,
)


async def publish_until_acked(js: Any, subject: str, payload: bytes, msg_id: str) -> None:
    """What a careful producer does: retry with the same Nats-Msg-Id until stored; JetStream
    drops the copies of a publish that was stored but whose ack was lost."""
    delay = 0.1
    while True:
        try:
            await js.publish(subject, payload, timeout=2, headers={"Nats-Msg-Id": msg_id})
            return
        except Exception:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


@pytest.mark.timeout(420)
async def test_killing_one_of_three_nats_servers_loses_nothing(tmp_path: Path) -> None:
    cluster = ManagedNatsCluster(
        base_dir=tmp_path / "nats", subjects=Subjects(), partitions=PARTITIONS
    )
    url = await cluster.start()
    nodes = [
        NodeProcess(
            nats_url=url,
            data_dir=tmp_path / name,
            partitions=PARTITIONS,
            name=name,
            extra=(*FAST, "--replicas", "3"),
        )
        for name in ("a", "b")
    ]
    received: list[dict[str, Any]] = []

    async def on_anomaly(msg: Msg) -> None:
        received.append(json.loads(msg.data))

    nc = await connect(url, name="test-producer")  # pings often, as the nodes do
    try:
        await nc.subscribe("dl.anomaly.>", cb=on_anomaly)
        for node in nodes:
            await node.start()
        js = nc.jetstream()
        info = await js.stream_info("DL_EVENTS")
        assert info.config.num_replicas == 3
        assert (await js.stream_info("KV_dl_leases")).config.num_replicas == 3
        events = make_events()
        for i, (subject, payload) in enumerate(events):
            if i == len(events) // 3:
                cluster.servers[0].kill()
            await publish_until_acked(js, subject, payload, msg_id=f"e{i}")
            if i % 20 == 0:
                await asyncio.sleep(0.01)

        applied: list[int] = []

        async def done() -> bool:
            applied.append(await applied_points(nc))
            return applied[-1] == TOTAL_POINTS

        # Recovery after the kill takes 15 to 30 s here (consumer re-creation against the
        # dead peer): the bound leaves room, the assertion is unchanged.
        try:
            await eventually_async(done, timeout=240)
        except AssertionError:
            logs = "\n".join(node.notable_log() for node in nodes)
            raise AssertionError(f"applied {applied[-5:]} of {TOTAL_POINTS}\n{logs}") from None
        assert (await js.stream_info("DL_EVENTS")).state.messages >= len(events)
        for node in nodes:
            assert node.terminate() == 0
        await asyncio.sleep(0.3)
    finally:
        for node in nodes:
            node.ensure_stopped()
        await nc.close()
        cluster.stop()
    ids = Counter(a["id"] for a in received)
    assert received and [i for i, n in ids.items() if n > 1] == []


async def test_cluster_status_reads_every_lease_on_three_servers(tmp_path: Path) -> None:
    """Each read is a fresh connection, as `driftlock cluster status` makes: nats-py's key
    watcher listed no key at all for 5 of 200 such reads of an R3 bucket."""
    partitions = 64
    cluster = ManagedNatsCluster(base_dir=tmp_path / "nats", subjects=Subjects(), partitions=8)
    url = await cluster.start()
    try:
        nc = await connect(url, name="test-writer")
        js = nc.jetstream()
        members = await js.create_key_value(bucket="dl_members", replicas=3)
        leases = await js.create_key_value(bucket="dl_leases", replicas=3)
        await members.put(
            member_key("n1"), msgspec.json.encode(MemberRecord(id="n1", instance="i"))
        )
        for p in range(partitions):
            await leases.put(lease_key(p), msgspec.json.encode(LeaseRecord(node="n1")))
        await leases.delete(lease_key(0))  # a released-and-deleted lease reads as unowned
        await nc.close()
        for _ in range(60):
            reader = await connect(url, name="test-status")
            try:
                view = await cluster_status(reader.jetstream(), "dl", partitions, 10.0)
            finally:
                await reader.close()
            assert [m["id"] for m in view["members"]] == ["n1"]
            assert view["members"][0]["partitions"] == list(range(1, partitions))
            assert view["unowned"] == [0]
    finally:
        cluster.stop()


async def test_a_kv_cache_starts_with_every_key_on_three_servers(tmp_path: Path) -> None:
    """The gateway's copy of a bucket (API keys, users, …) is whole once `start` returns,
    and after every reload; nats-py's end-of-values marker can come before the values."""
    cluster = ManagedNatsCluster(base_dir=tmp_path / "nats", subjects=Subjects(), partitions=8)
    url = await cluster.start()
    try:
        nc = await connect(url, name="test-gateway")
        kv = await nc.jetstream().create_key_value(bucket="keys", replicas=3)
        for i in range(64):
            await kv.put(f"k{i}", msgspec.json.encode({"n": i}))
        await kv.delete("k0")
        empty = await nc.jetstream().create_key_value(bucket="empty", replicas=3)
        for _ in range(40):
            cache = KvCache(kv, dict[str, int])
            await cache.start()
            try:
                assert dict(cache.items()) == {f"k{i}": {"n": i} for i in range(1, 64)}
            finally:
                await cache.stop()
        nothing = KvCache(empty, dict[str, int])
        await nothing.start()  # an empty bucket is loaded at once, not after a timeout
        await nothing.stop()
        await nc.close()
    finally:
        cluster.stop()


async def test_a_cluster_that_fails_to_start_leaves_no_server_running(tmp_path: Path) -> None:
    """Given no time to come up, start fails: the servers it launched are stopped, since the
    caller, holding no cluster, has nothing to stop (under pytest they outlived the test)."""
    cluster = ManagedNatsCluster(base_dir=tmp_path / "nats", subjects=Subjects(), partitions=8)
    with pytest.raises(NatsServerError, match="did not start within"):
        await cluster.start(timeout=0.0)
    assert _launched(tmp_path) == 3
    assert _running_from(tmp_path) == []


def _launched(directory: Path) -> int:
    """Servers launched under `directory`: each opens its log as it starts."""
    return len(list(directory.glob("nats/n*/nats-server.log")))


def _running_from(directory: Path) -> list[int]:
    """Processes whose command line names a file under `directory`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(directory).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            continue
    return found
