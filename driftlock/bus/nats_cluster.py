"""A local NATS cluster of managed servers on loopback (`driftlock up --cluster 3`, tests):
every server has its own store, they route to each other, and JetStream replicates streams
and buckets across them."""

import asyncio
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.js.api import StorageType

from driftlock.bus.nats_config import ClusterRoutes
from driftlock.bus.server import ManagedNatsServer
from driftlock.bus.subjects import Subjects
from driftlock.errors import NatsServerError

PROBE_STREAM = "DRIFTLOCK_READY_PROBE"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ManagedNatsCluster:
    base_dir: Path
    subjects: Subjects
    partitions: int
    size: int = 3
    host: str = "127.0.0.1"
    first_port: int = -1
    """Client port of the first server, the others follow it; -1 picks free ports."""
    servers: list[ManagedNatsServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return ",".join(s.url for s in self.servers)

    async def start(self, timeout: float = 30.0) -> str:
        if not self.servers:
            self.servers = self._plan()
        try:
            await asyncio.gather(*(s.start(timeout) for s in self.servers))
            await self._wait_for_jetstream(timeout)
        except BaseException:
            self.stop()  # the servers that did start: the caller has no cluster to stop
            raise
        return self.url

    def _plan(self) -> list[ManagedNatsServer]:
        route_ports = [free_port(self.host) for _ in range(self.size)]
        routes = tuple(f"nats-route://{self.host}:{p}" for p in route_ports)
        return [
            ManagedNatsServer(
                base_dir=self.base_dir / f"n{i}",
                subjects=self.subjects,
                partitions=self.partitions,
                host=self.host,
                port=self.first_port + i if self.first_port > 0 else free_port(self.host),
                cluster=ClusterRoutes(server_name=f"n{i}", port=route_ports[i], routes=routes),
            )
            for i in range(self.size)
        ]

    async def _wait_for_jetstream(self, timeout: float) -> None:
        """Servers accept clients before JetStream can place replicated streams: a meta leader
        answers `account_info` while the other peers are still joining, and a node creating
        its streams then gets "no suitable peers for placement". Ready means a probe stream
        of `size` replicas can be created."""
        nc = await nats.connect(self.url.split(","))
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    await js.add_stream(
                        name=PROBE_STREAM,
                        subjects=[f"_driftlock.probe.{PROBE_STREAM}"],
                        num_replicas=self.size,
                        storage=StorageType.MEMORY,
                    )
                    await js.delete_stream(PROBE_STREAM)
                    return
                except Exception as exc:
                    if time.monotonic() > deadline:
                        raise NatsServerError(
                            f"NATS cluster cannot place {self.size} replicas: {exc!r}"
                        ) from None
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
