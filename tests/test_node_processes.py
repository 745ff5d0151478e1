"""`driftlock node --processes N`: a node of several processes, each a cluster member with its
share of the partitions, through the real CLI against a real nats-server."""

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from driftlock.actors.processes import plan
from driftlock.bus.partition import partition_of
from driftlock.bus.server import ManagedNatsServer
from driftlock.cluster.status import cluster_status
from driftlock.errors import ConfigError
from driftlock.settings import load_settings
from tests.conftest import TEST_PARTITIONS, eventually
from tests.processes import ROOT, NodeProcess, start_up


def node_of_two(
    nats_server: ManagedNatsServer, tmp_path: Path, name: str, *extra: str
) -> NodeProcess:
    """`driftlock node --processes 2`, its log (both processes') at tmp_path/<name>.log."""
    return NodeProcess(
        nats_url=nats_server.url,
        data_dir=tmp_path / "node",
        partitions=TEST_PARTITIONS,
        name=name,
        extra=("--processes", "2", *extra),
    )


def started(log: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [r for r in records if r.get("msg") == "node started"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: only its parent's wait() would remove it.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"


def test_the_plan_gives_each_process_its_id_store_port_and_share(tmp_path: Path) -> None:
    node = load_settings(
        node_id="edge",
        data_dir=tmp_path,
        metrics_port=9400,
        processes=3,
        max_active_actors=30_000,
        detect_threads=6,
    )
    planned = plan(node)
    assert [s.node_id for s in planned] == ["edge-0", "edge-1", "edge-2"]
    assert [s.data_dir for s in planned] == [tmp_path / f"process-{k}" for k in range(3)]
    assert [s.metrics_port for s in planned] == [9400, 9401, 9402]
    assert {(s.processes, s.max_active_actors, s.detect_threads) for s in planned} == {
        (1, 10_000, 2)
    }
    # Free ports and disabled metrics stay so in every process.
    assert {s.metrics_port for s in plan(node.model_copy(update={"metrics_port": 0}))} == {0}
    assert {s.metrics_port for s in plan(node.model_copy(update={"metrics_port": -1}))} == {-1}
    # 0 processes: one per core.
    assert len(plan(node.model_copy(update={"processes": 0}))) == (os.cpu_count() or 1)


def test_settings_the_processes_cannot_have_are_refused_before_any_starts() -> None:
    with pytest.raises(ConfigError, match="exceed 64 characters"):
        plan(load_settings(node_id="n" * 63, processes=2))
    with pytest.raises(ConfigError, match="beyond 65535"):
        plan(load_settings(metrics_port=65535, processes=2))
    result = subprocess.run(
        [sys.executable, "-m", "driftlock.cli", "node", "--processes", "2",
         "--metrics-port", "65535"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--metrics-port 65535: process 1 would serve on 65536" in result.stderr


async def test_a_node_of_two_processes_shares_the_partitions_detects_and_heals(
    nats_server: ManagedNatsServer, tmp_path: Path
) -> None:
    node = node_of_two(nats_server, tmp_path, "multi", "--lease-ttl-s", "2", "--member-ttl-s", "2")
    nc = await nats.connect(nats_server.url)
    try:
        await node.start()
        await eventually(lambda: len(started(node.log_path)) == 2, timeout=30)
        pids = {r["node_id"]: r["pid"] for r in started(node.log_path)}
        assert sorted(pids) == ["multi-0", "multi-1"]
        assert all((tmp_path / "node" / f"process-{k}" / "state").is_dir() for k in (0, 1))

        owners = await _owners_when_shared(nc, {"multi-0", "multi-1"})
        # Streams on partitions of both processes: each process detects on its own.
        metrics = _metrics_on_each_owner(owners)
        anomalies = await _spike_anomalies(nc, metrics)
        assert anomalies == set(metrics)

        # kill -9 one process: the node starts it again, under the same id.
        os.kill(pids["multi-0"], signal.SIGKILL)
        await eventually(lambda: len(started(node.log_path)) == 3, timeout=30)
        restarted = started(node.log_path)[-1]
        assert restarted["node_id"] == "multi-0" and restarted["pid"] != pids["multi-0"]
        assert b"node process exited; starting it again" in node.log_path.read_bytes()
        await _owners_when_shared(nc, {"multi-0", "multi-1"})

        # SIGTERM to the node stops every process gracefully.
        assert node.terminate(timeout=60) == 0
        assert not alive(restarted["pid"]) and not alive(pids["multi-1"])
    except BaseException:
        print(node.notable_log())
        raise
    finally:
        node.ensure_stopped()
        await nc.close()


async def test_the_processes_stop_when_their_node_is_killed(
    nats_server: ManagedNatsServer, tmp_path: Path
) -> None:
    """kill -9 leaves the node no time to stop its processes: the kernel tells them."""
    node = node_of_two(nats_server, tmp_path, "orphans")
    pids: list[int] = []
    try:
        await node.start()
        await eventually(lambda: len(started(node.log_path)) == 2, timeout=30)
        pids = [r["pid"] for r in started(node.log_path)]
        node.kill()
        await eventually(lambda: not any(map(alive, pids)), timeout=30)
    finally:
        node.ensure_stopped()
        for pid in filter(alive, pids):  # only if the test failed
            os.kill(pid, signal.SIGKILL)


async def test_a_process_that_fails_as_the_node_starts_stops_the_node(
    nats_server: ManagedNatsServer, tmp_path: Path
) -> None:
    """The server maps TEST_PARTITIONS partitions: a node set for another count must not run
    (each process refuses), and the node says so instead of restarting them for ever."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "driftlock.cli", "node", "--processes", "2",
         "--nats-url", nats_server.url, "--data-dir", str(tmp_path),
         "--partitions", str(TEST_PARTITIONS * 2), "--metrics-port", "-1"],
        cwd=ROOT, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "exited with 1" in result.stderr and "its log above says why" in result.stderr


async def test_up_runs_its_node_as_processes_beside_the_gateway(tmp_path: Path) -> None:
    up, banner = await start_up(tmp_path, "--processes", "2")
    try:
        assert "each process on a free port" in banner  # start_up passes --metrics-port 0
        found = re.search(r"NATS\s+(nats://\S+)", banner)
        assert found, banner
        nc = await nats.connect(found.group(1))
        try:
            # The banner came once the processes owned every partition between them.
            status = await cluster_status(nc.jetstream(), "dl", 64, 5.0)
            assert status["unowned"] == []
            owners = await _owners_when_shared(nc, {"local-0", "local-1"}, partitions=64)
            metrics = _metrics_on_each_owner(owners)
            assert await _spike_anomalies(nc, metrics) == set(metrics)
        finally:
            await nc.close()
        up.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(up.wait(), 60) == 0
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()


async def _owners_when_shared(
    nc: Client, members: set[str], partitions: int = TEST_PARTITIONS
) -> dict[int, str]:
    owners: dict[int, str] = {}

    async def shared() -> bool:
        status = await cluster_status(nc.jetstream(), "dl", partitions, 2.0)
        owners.clear()
        owners.update({row["partition"]: row["owner"] for row in status["partitions"]})
        return set(owners.values()) == members and len(owners) == partitions

    deadline = asyncio.get_running_loop().time() + 30
    while not await shared():
        assert asyncio.get_running_loop().time() < deadline, f"not shared: {owners}"
        await asyncio.sleep(0.2)
    return owners


def _metrics_on_each_owner(owners: dict[int, str]) -> list[str]:
    """One metric of tenant t on a partition of each owner."""
    chosen: dict[str, str] = {}
    for i in range(1000):
        metric = f"m{i}"
        chosen.setdefault(owners[partition_of("t", metric, len(owners))], metric)
        if len(chosen) == len(set(owners.values())):
            break
    return sorted(chosen.values())


async def _spike_anomalies(nc: Client, metrics: list[str]) -> set[str]:
    """Calm points, then a spike, on each metric; the metrics whose spike came out."""
    found: set[str] = set()

    async def on_anomaly(msg: Msg) -> None:
        if json.loads(msg.data)["value"] == 100.0:
            found.add(msg.subject.split(".")[-1])

    await nc.subscribe("dl.anomaly.t.>", cb=on_anomaly)
    rng = random.Random(7)
    for metric in metrics:
        calm = [[1_700_000_000 + j, rng.gauss(10, 1)] for j in range(200)]
        await nc.publish(f"dl.in.t.{metric}", json.dumps([*calm, [1_700_000_200, 100.0]]).encode())
    await eventually(lambda: found == set(metrics), timeout=30)
    return found
