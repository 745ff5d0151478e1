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


async def verify_partition_mapping(
    nc: Client, subjects: Subjects, partitions: int, timeout: float = 2.0
) -> None:
    metric = "m" + secrets.token_hex(8)
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Msg) -> None:
        if not seen.done():
            seen.set_result(msg.subject)

    sub = await nc.subscribe(f"{subjects.prefix}.p.*.{PROBE_TENANT}.{metric}", cb=on_msg)
    try:
        await nc.publish(subjects.ingest(PROBE_TENANT, metric), b"{}")
        await nc.flush()
        try:
            subject = await asyncio.wait_for(seen, timeout)
        except TimeoutError:
            raise NatsSetupError(
                f"the NATS server at {nc.connected_url.geturl() if nc.connected_url else '?'} "
                f"does not map {subjects.ingest_wildcard} to partitions. Add this block to "
                f"its config (`driftlock nats-config` prints it) and reload it:\n"
                + mapping_block(subjects, partitions)
            ) from None
    finally:
        await sub.unsubscribe()
    got = int(subject.split(".")[2])
    want = partition_of(PROBE_TENANT, metric, partitions)
    if got != want:
        raise NatsSetupError(
            f"the NATS server partitions ingest subjects differently from this node "
            f"(partition {got}, expected {want}): its mapping must use partition({partitions},1,2):\n"
            + mapping_block(subjects, partitions)
        )
