"""`driftlock up`: the embedded default — a managed nats-server with JetStream under the data
directory, plus one node, the alerter and the gateway — and the banner that tells the user
where everything is."""

import asyncio
import errno
import logging
import socket

from driftlock.actors.node import Node
from driftlock.alerting.service import Alerter, config_from
from driftlock.bus.nats_cluster import ManagedNatsCluster
from driftlock.bus.server import ManagedNatsServer
from driftlock.bus.subjects import Subjects
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
        node = Node(running)
        await node.start()
        # The alerter's metrics join the node's endpoint: one Prometheus page per process.
        alerter = Alerter(config_from(running, metrics_port=-1), registry=node.metrics.registry)
        await alerter.start()
        gateway = GatewayServer(running)
        try:
            gateway_url = await gateway.start()
            credentials = await _first_tenant(gateway)
            # The banner means "ready": on a fresh cluster the partition leases can take a
            # few seconds to be acquired, and `driftlock status` should not show them unowned.
            if not await node.wait_settled(SETTLE_TIMEOUT_S):
                log.warning("node has not taken all its partitions yet; starting anyway")
            print(banner(url, subjects, node.metrics_port, settings), flush=True)
            print(gateway_banner(gateway_url, credentials), flush=True)
            await stop.wait()
        finally:
            await gateway.stop()
            await alerter.stop()
            await node.shutdown()
    finally:
        server.stop()


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


def banner(url: str, subjects: Subjects, metrics_port: int | None, settings: Settings) -> str:
    metrics = (
        f"http://{settings.metrics_host}:{metrics_port}/metrics" if metrics_port else "disabled"
    )
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
