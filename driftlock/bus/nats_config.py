"""The nats-server configuration DriftLock needs: the partition mapping, and for the managed
server, the listen address and JetStream store."""

from pathlib import Path

from driftlock.bus.subjects import Subjects


def mapping_block(subjects: Subjects, partitions: int) -> str:
    """The `mappings` block an operator adds to an external server's (account's) config."""
    return (
        "mappings = {\n"
        f'  "{subjects.ingest_wildcard}": "{subjects.partition_mapping(partitions)}"\n'
        "}\n"
    )


def managed_server_config(
    *, subjects: Subjects, partitions: int, host: str, port: int, store_dir: Path
) -> str:
    """Config of the nats-server `driftlock up` and the tests start. Port -1 picks a free one."""
    return (
        "# Written by DriftLock; edits are overwritten at the next start.\n"
        f'listen: "{host}:{port}"\n'
        "max_payload: 8MB\n"
        "jetstream {\n"
        f'  store_dir: "{store_dir}"\n'
        "}\n" + mapping_block(subjects, partitions)
    )
