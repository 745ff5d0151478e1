"""`driftlock up`: the embedded default — a managed nats-server with JetStream under the data
directory, plus one node, the alerter and the gateway — and the banner that tells the user
where everything is."""

import asyncio
import contextlib
import errno
import logging
import socket
import time

import nats
from nats.aio.client import Client

from driftlock.actors.node import Node
from driftlock.actors.processes import process_count, run_node_processes
from driftlock.alerting.service import Alerter, config_from
from driftlock.bus.nats_cluster import ManagedNatsCluster
from driftlock.bus.server import ManagedNatsServer
from driftlock.bus.streams import StreamLimits, ensure_streams
from driftlock.bus.subjects import Subjects
from driftlock.cluster.status import cluster_status
from driftlock.errors import ConfigError
from driftlock.gateway.bootstrap import Credentials, create_tenant
from driftlock.gateway.server import GatewayServer
from driftlock.settings import Settings

log = logging.getLogger("driftlock.up")

SETTLE_TIMEOUT_S = 60.0


def check_port_free(host: str, port: int) -> None:
    if port <= 0:
        return
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"--nats-port {port}: {host}:{port} is already in use (another nats-server "
                    "or DriftLock?); pass --nats-port -1 for a free port"
                ) from None
            raise


def managed_nats(settings: Settings, subjects: Subjects) -> ManagedNatsServer | ManagedNatsCluster:
    for i in range(settings.cluster):
        check_port_free(settings.nats_host, settings.nats_port + i if settings.nats_port > 0 else 0)
    base_dir = settings.data_dir.resolve() / "nats"
    if settings.cluster == 1:
        return ManagedNatsServer(
            base_dir=base_dir,
            subjects=subjects,
            partitions=settings.partitions,
            host=settings.nats_host,
            port=settings.nats_port,
        )
    return ManagedNatsCluster(
        base_dir=base_dir,
        subjects=subjects,
        partitions=settings.partitions,
        size=settings.cluster,
        host=settings.nats_host,
        first_port=settings.nats_port,
    )


async def run_up(settings: Settings, stop: asyncio.Event) -> None:
    subjects = Subjects(settings.prefix)
    server = managed_nats(settings, subjects)
    url = await server.start()
    replicas = max(settings.replicas, min(settings.cluster, 3))
    update: dict[str, object] = {"nats_url": url, "replicas": replicas}
    if "node_id" not in settings.model_fields_set:
        # One node per data directory: a stable id lets a restart take its partitions back
        # at once instead of waiting for the previous process's leases to expire.
        update["node_id"] = "local"
    running = settings.model_copy(update=update)
    try:
        if process_count(running) > 1:
            await _serve_with_node_processes(running, url, subjects, stop)
        else:
            await _serve(running, url, subjects, stop)
    finally:
        server.stop()


async def _serve(settings: Settings, url: str, subjects: Subjects, stop: asyncio.Event) -> None:
    """The node, the alerter and the gateway in this process."""
    node = Node(settings)
    await node.start()
    # The alerter's metrics join the node's endpoint: one Prometheus page per process.
    alerter = Alerter(config_from(settings, metrics_port=-1), registry=node.metrics.registry)
    await alerter.start()
    gateway = GatewayServer(settings)
    try:
        gateway_url = await gateway.start()
        credentials = await _first_tenant(gateway)
        # The banner means "ready": on a fresh cluster the partition leases can take a few
        # seconds to be acquired, and `driftlock status` should not show them unowned.
        if not await node.wait_settled(SETTLE_TIMEOUT_S):
            log.warning("node has not taken all its partitions yet; starting anyway")
        metrics = f"http://{settings.metrics_host}:{node.metrics_port}/metrics"
        print(banner(url, subjects, metrics if node.metrics_port else None, settings), flush=True)
        print(gateway_banner(gateway_url, credentials), flush=True)
        await stop.wait()
    finally:
        await gateway.stop()
        await alerter.stop()
        await node.shutdown()


async def _serve_with_node_processes(
    settings: Settings, url: str, subjects: Subjects, stop: asyncio.Event
) -> None:
    """The node as `--processes` processes of its own (driftlock/actors/processes.py); the
    alerter and the gateway in this one, the alerter's metrics on the port after theirs."""
    count = process_count(settings)
    await _create_streams(settings, subjects)
    async with contextlib.AsyncExitStack() as running:  # stops in reverse order
        nodes_stop = asyncio.Event()
        nodes = asyncio.create_task(run_node_processes(settings, nodes_stop))
        running.push_async_callback(_stop_processes, nodes_stop, nodes)
        port = settings.metrics_port
        alerter = Alerter(config_from(settings, metrics_port=port + count if port > 0 else port))
        await alerter.start()
        running.push_async_callback(alerter.stop)
        gateway = GatewayServer(settings)
        running.push_async_callback(gateway.stop)
        gateway_url = await gateway.start()
        credentials = await _first_tenant(gateway)
        if not await _partitions_owned(settings, nodes):
            log.warning("the node's processes have not taken all partitions yet; starting anyway")
        print(banner(url, subjects, _process_metrics(settings, count), settings), flush=True)
        print(gateway_banner(gateway_url, credentials), flush=True)
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([nodes, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if nodes.done():
            nodes.result()  # a process failed as the node started: `up` ends with its error


async def _stop_processes(stop: asyncio.Event, processes: "asyncio.Task[None]") -> None:
    stop.set()
    await asyncio.gather(processes, return_exceptions=True)  # a failure is raised above


async def _create_streams(settings: Settings, subjects: Subjects) -> None:
    """The streams, before the alerter and the gateway read them (the node's processes,
    which create them too, start later)."""
    nc = await _connect_briefly(settings)
    try:
        s = settings
        limits = StreamLimits(s.events_max_age_s, s.anomalies_max_age_s, s.duplicate_window_s)
        await ensure_streams(nc.jetstream(), subjects, s.partitions, limits, replicas=s.replicas)
    finally:
        await nc.close()


async def _partitions_owned(settings: Settings, nodes: "asyncio.Task[None]") -> bool:
    """Wait until the node's processes own every partition between them (False on timeout);
    a process failing meanwhile raises its error."""
    nc = await _connect_briefly(settings)
    try:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            if nodes.done():
                nodes.result()
            status = await cluster_status(
                nc.jetstream(), settings.prefix, settings.partitions, settings.member_ttl_s
            )
            if not status["unowned"]:
                return True
            await asyncio.sleep(0.2)
        return False
    finally:
        await nc.close()


async def _connect_briefly(settings: Settings) -> Client:
    """nats-py's own connection, for a moment's work: no reconnect loop, and no warning when
    it is closed."""
    servers = [u.strip() for u in settings.nats_url.split(",") if u.strip()]
    return await nats.connect(servers, name=f"driftlock-up-{settings.node_id}")


def _process_metrics(settings: Settings, count: int) -> str | None:
    port = settings.metrics_port
    if port < 0:
        return None
    if port == 0:
        return "each process on a free port: see its `node started` log line"
    host = settings.metrics_host
    return (
        f"http://{host}:{port}/metrics … :{port + count - 1} (the node's processes), "
        f":{port + count} (alerter)"
    )


async def _first_tenant(gateway: GatewayServer) -> Credentials | None:
    """On the very first start: tenant 'default' with an owner, credentials shown once."""
    gw = gateway.app.gateway
    assert gw is not None
    if any(True for _ in gw.control.tenants.values()):
        return None
    return await create_tenant(gw.control, tenant="default", owner_email="owner@localhost")


def gateway_banner(url: str, credentials: Credentials | None) -> str:
    lines = [f"Gateway   {url}   (API: {url}/openapi.json)"]
    if credentials is not None:
        lines += [
            "",
            "First start: tenant 'default' was created. Its owner (shown once, keep it):",
            f"  email     {credentials.email}",
            f"  password  {credentials.password}",
            f"  curl -s {url}/v1/auth/token -H 'Content-Type: application/json' \\",
            f'    -d \'{{"email": "{credentials.email}", "password": "{credentials.password}"}}\'',
        ]
    return "\n".join(lines) + "\n"


def banner(url: str, subjects: Subjects, metrics: str | None, settings: Settings) -> str:
    metrics = metrics or "disabled"
    ingest = subjects.ingest("default", "cpu")
    first = url.split(",", maxsplit=1)[0]  # any server of a cluster will do
    return f"""
DriftLock is running (Ctrl-C stops it).
  NATS      {url}
  metrics   {metrics}
  data      {settings.data_dir.resolve()}

Publish a point (JSON; a list of points is the fast path):
  .venv/bin/python - <<'EOF'
  import asyncio, nats
  async def main():
      nc = await nats.connect("{first}")
      await nc.publish("{ingest}", b'{{"value": 0.93}}')
      await nc.drain()
  asyncio.run(main())
  EOF

Subscribe to anomalies:
  .venv/bin/python - <<'EOF'
  import asyncio, nats
  async def main():
      nc = await nats.connect("{first}")
      sub = await nc.subscribe("{subjects.anomaly_all}")
      async for msg in sub.messages:
          print(msg.subject, msg.data.decode())
  asyncio.run(main())
  EOF
"""
