"""The nats-server configuration DriftLock needs: the partition mapping, and for the managed
server, the listen address and JetStream store."""

from dataclasses import dataclass
from pathlib import Path

from driftlock.bus.subjects import Subjects


def mapping_block(subjects: Subjects, partitions: int) -> str:
    """The `mappings` block an operator adds to an external server's (account's) config."""
    return (
        "mappings = {\n"
        f'  "{subjects.ingest_wildcard}": "{subjects.partition_mapping(partitions)}"\n'
        "}\n"
    )


@dataclass(frozen=True, slots=True)
class ClusterRoutes:
    """One server's place in a local NATS cluster: its name, route port and every route."""

    server_name: str
    port: int
    routes: tuple[str, ...]
    name: str = "driftlock"


def managed_server_config(
    *,
    subjects: Subjects,
    partitions: int,
    host: str,
    port: int,
    store_dir: Path,
    cluster: ClusterRoutes | None = None,
) -> str:
    """Config of the nats-server `driftlock up` and the tests start. Port -1 picks a free one."""
    routes = _cluster_block(host, cluster) if cluster else ""
    return (
        "# Written by DriftLock; edits are overwritten at the next start.\n"
        f'listen: "{host}:{port}"\n'
        "max_payload: 8MB\n"
        "jetstream {\n"
        f'  store_dir: "{store_dir}"\n'
        "}\n" + routes + mapping_block(subjects, partitions)
    )


def _cluster_block(host: str, cluster: ClusterRoutes) -> str:
    routes = ", ".join(f'"{route}"' for route in cluster.routes)
    return (
        f'server_name: "{cluster.server_name}"\n'
        "cluster {\n"
        f'  name: "{cluster.name}"\n'
        f'  listen: "{host}:{cluster.port}"\n'
        f"  routes: [{routes}]\n"
        "}\n"
    )
