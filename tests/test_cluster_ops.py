"""What an operator does with a running cluster, through the real CLI: `driftlock cluster
status` and `drain`/`undrain`, against two nodes sharing one nats-server."""

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from driftlock.actors.node import Node
from driftlock.bus.server import ManagedNatsServer
from driftlock.gateway.server import GatewayServer
from driftlock.settings import load_settings
from tests.conftest import TEST_PARTITIONS, eventually, scrape
from tests.gateway_helpers import new_tenant
from tests.processes import ROOT, start_up
from tests.test_up import banner_snippets, python


def cli(nats_url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "driftlock.cli", "cluster", *args, "--nats-url", nats_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def status(nats_url: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        cli(nats_url, "status", "--json", "--partitions", str(TEST_PARTITIONS))
    )
    return found


@pytest.fixture
async def two_nodes(nats_server: ManagedNatsServer, tmp_path: Path) -> AsyncIterator[list[Node]]:
    nodes = [
        Node(
            load_settings(
                nats_url=nats_server.url,
                data_dir=tmp_path / name,
                partitions=TEST_PARTITIONS,
                metrics_port=0,
                node_id=name,
                lease_ttl_s=2,
                member_ttl_s=2,
            )
        )
        for name in ("n1", "n2")
    ]
    for node in nodes:
        await node.start()
    yield nodes
    for node in nodes:
        await node.shutdown()


async def test_status_drain_and_undrain(
    nats_server: ManagedNatsServer, two_nodes: list[Node]
) -> None:
    n1, n2 = two_nodes

    def shared() -> bool:
        owned = [n.supervisor.owned() for n in two_nodes]
        return all(owned) and sorted(owned[0] | owned[1]) == list(range(TEST_PARTITIONS))

    await eventually(shared, timeout=15)
    view = status(nats_server.url)
    assert [m["id"] for m in view["members"]] == ["n1", "n2"]
    assert all(m["live"] and not m["draining"] for m in view["members"])
    owners = {row["partition"]: row["owner"] for row in view["partitions"]}
    assert {p for p, o in owners.items() if o == "n1"} == n1.supervisor.owned()
    assert view["unowned"] == []
    assert "MEMBER" in cli(nats_server.url, "status", "--partitions", str(TEST_PARTITIONS))

    assert "draining" in cli(nats_server.url, "drain", "n1")
    await eventually(
        lambda: not n1.supervisor.owned() and len(n2.supervisor.owned()) == TEST_PARTITIONS,
        timeout=15,
    )
    drained = status(nats_server.url)
    assert [m["draining"] for m in drained["members"]] == [True, False]
    assert {row["owner"] for row in drained["partitions"]} == {"n2"}
    # Every handoff went through a snapshot, and the new owner measured its pause.
    assert all(row["snapshot_seq"] is not None for row in drained["partitions"])
    assert "driftlock_handoff_pause_seconds_count" in scrape(n2.metrics_port)

    cli(nats_server.url, "undrain", "n1")
    await eventually(shared, timeout=15)


def test_drain_refuses_a_malformed_node_id() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "driftlock.cli", "cluster", "drain", "no such/node"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("driftlock: NODE 'no such/node': a node id matches")


def test_cluster_status_says_clearly_when_nats_is_unreachable() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftlock.cli",
            "cluster",
            "status",
            "--nats-url",
            "nats://127.0.0.1:1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("driftlock: cannot reach NATS at nats://127.0.0.1:1")


async def test_the_gateway_shows_admins_the_cluster(node: Node, gateway: GatewayServer) -> None:
    await eventually(lambda: len(node.supervisor.owned()) == TEST_PARTITIONS)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        owner = await new_tenant(gateway, client, "ops")
        r = await client.get("/v1/cluster", headers=owner.auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [m["id"] for m in body["members"]] == ["test-node"]
    assert body["members"][0]["partitions"] == list(range(TEST_PARTITIONS))
    assert {row["owner"] for row in body["partitions"]} == {"test-node"}
    assert body["unowned"] == []


async def test_up_with_a_three_server_cluster(tmp_path: Path) -> None:
    up, banner = await start_up(tmp_path, "--cluster", "3")
    try:
        found = re.search(r"NATS\s+(\S+)", banner)
        assert found, banner
        urls = found.group(1).split(",")
        assert len(urls) == 3
        publish_one, _ = banner_snippets(banner)
        one = await python(publish_one)
        assert await asyncio.wait_for(one.wait(), 30) == 0
        nc = await nats.connect(urls)
        try:
            js = nc.jetstream()
            assert (await js.stream_info("DL_EVENTS")).config.num_replicas == 3
            streams = [info async for info in _streams(js)]
            assert {i.config.name for i in streams} >= {"KV_dl_tenants", "KV_dl_leases"}
            assert any(i.config.name.startswith("KV_dl_alert_") for i in streams)
            assert {i.config.num_replicas for i in streams} == {3}, [
                (i.config.name, i.config.num_replicas) for i in streams
            ]
        finally:
            await nc.close()
        view = await settled_status(found.group(1))
        assert len(view["members"]) == 1 and view["unowned"] == []
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(up.wait(), 60)
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "nats").iterdir()) == ["n0", "n1", "n2"]


async def settled_status(nats_url: str, timeout: float = 15.0) -> dict[str, Any]:
    """`cluster status --json` once every partition shows an owner, or the last view after
    `timeout`: the node takes its partitions' leases over the first seconds after start."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        view: dict[str, Any] = json.loads(cli(nats_url, "status", "--json"))
        if not view["unowned"] or asyncio.get_running_loop().time() > deadline:
            return view
        await asyncio.sleep(0.5)


async def _streams(js: Any) -> Any:
    for info in await js.streams_info():
        yield info
