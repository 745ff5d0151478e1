"""Start-up check that the NATS server sorts ingest subjects into partitions exactly as
`partition_of` does; without the mapping no event would ever reach a partition worker."""

import asyncio
import secrets

from nats.aio.client import Client
from nats.aio.msg import Msg

from driftlock.bus.nats_config import mapping_block
from driftlock.bus.partition import partition_of
from driftlock.bus.subjects import PROBE_TENANT, Subjects
from driftlock.errors import NatsSetupError

PROBES = 32
"""Probe ids per check: a server set for a different partition count agrees with ours on a
random id by chance, but on 32 of them almost never (at worst 2^-32)."""


async def verify_partition_mapping(
    nc: Client, subjects: Subjects, partitions: int, timeout: float = 2.0
) -> None:
    nonce = secrets.token_hex(6)
    metrics = [f"m{nonce}-{i}" for i in range(PROBES)]
    seen: dict[str, int] = {}
    complete = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        tokens = msg.subject.split(".")
        if tokens[4].startswith(f"m{nonce}-"):  # probes of other nodes starting now are ignored
            seen[tokens[4]] = int(tokens[2])
        if len(seen) == PROBES:
            complete.set()

    sub = await nc.subscribe(f"{subjects.prefix}.p.*.{PROBE_TENANT}.*", cb=on_msg)
    try:
        for metric in metrics:
            await nc.publish(subjects.ingest(PROBE_TENANT, metric), b"{}")
        await nc.flush()
        try:
            await asyncio.wait_for(complete.wait(), timeout)
        except TimeoutError:
            raise NatsSetupError(
                f"the NATS server at {nc.connected_url.geturl() if nc.connected_url else '?'} "
                f"does not map {subjects.ingest_wildcard} to partitions. Add this block to "
                "its config (`driftlock nats-config` prints it) and reload it:\n"
                + mapping_block(subjects, partitions)
            ) from None
    finally:
        await sub.unsubscribe()
    wrong = {m: n for m, n in seen.items() if n != partition_of(PROBE_TENANT, m, partitions)}
    if wrong:
        raise NatsSetupError(
            "the NATS server partitions ingest subjects differently from this node "
            f"({len(wrong)} of {PROBES} probes): its mapping must use "
            f"partition({partitions},1,2), as set by --partitions:\n"
            + mapping_block(subjects, partitions)
        )
