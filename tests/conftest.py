"""Fixtures layered as the real thing runs: store dir → nats-server → client → node.
Every test gets its own nats-server on a free port with a temporary JetStream store."""

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import nats
import pytest
from nats.aio.client import Client

from driftlock.actors.node import Node
from driftlock.bus.server import ManagedNatsServer
from driftlock.bus.subjects import Subjects
from driftlock.settings import Settings, load_settings

TEST_PARTITIONS = 8


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[ManagedNatsServer]:
    server = ManagedNatsServer(
        base_dir=tmp_path / "nats", subjects=Subjects(), partitions=TEST_PARTITIONS
    )
    await server.start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: ManagedNatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.drain()


@pytest.fixture
def node_settings(nats_server: ManagedNatsServer, tmp_path: Path) -> Settings:
    return load_settings(
        nats_url=nats_server.url,
        data_dir=tmp_path / "node",
        partitions=TEST_PARTITIONS,
        metrics_port=0,
        node_id="test-node",
    )


@pytest.fixture
async def node(node_settings: Settings) -> AsyncIterator[Node]:
    running = Node(node_settings)
    await running.start()
    yield running
    await running.shutdown()


async def eventually(
    check: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Wait until check() is true; fail with the check's name after timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"condition {check.__name__} not met within {timeout}s")
        await asyncio.sleep(interval)


def scrape(port: int | None) -> str:
    """The node's Prometheus page (served from its own thread, so a blocking read is fine)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


@pytest.fixture
async def gateway(node: Node, node_settings: Settings) -> AsyncIterator["GatewayServer"]:
    """A real uvicorn server on a free port, against the same nats-server as `node`."""
    from driftlock.gateway.server import GatewayServer

    server = GatewayServer(node_settings.model_copy(update={"gateway_port": 0}))
    await server.start()
    yield server
    await server.stop()


if TYPE_CHECKING:
    from driftlock.gateway.server import GatewayServer
