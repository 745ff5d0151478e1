"""publish_all: a batch is stored whole, or fails in time and gives back its pending-ack
slots, also when its acks are lost with a dead server; what JetStream refuses fails with
the reason."""

import asyncio
import os
import signal

import pytest
from nats.js.api import StreamConfig

from driftlock.bus.connection import connect
from driftlock.bus.publish import AckInbox, PublishRefused, publish_all
from driftlock.bus.server import ManagedNatsServer

SLOTS = 2


def batch(n: int, tag: str) -> list[tuple[str, bytes, dict[str, str] | None]]:
    return [(f"lost.{tag}", f"{tag}{i}".encode(), None) for i in range(n)]


async def test_a_stalled_batch_fails_in_time_and_frees_its_slots_for_the_next(
    nats_server: ManagedNatsServer,
) -> None:
    nc = await connect(nats_server.url, name="test")
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="LOST", subjects=["lost.>"]))
        inbox = AckInbox(nc, max_pending=SLOTS)
        await inbox.publish_all(batch(5, "a"), timeout=5.0)  # more messages than slots

        process = nats_server._process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)  # a server that takes publishes and never acks
        stalled = asyncio.create_task(inbox.publish_all(batch(5, "b"), timeout=0.5))
        done, _ = await asyncio.wait({stalled}, timeout=5.0)  # it gives up by itself
        assert done, "a stalled batch is still waiting"
        with pytest.raises(TimeoutError, match="waited for their acks"):
            stalled.result()
        nats_server.kill()  # the acks of what it took are lost for good
        await nats_server.start()  # same port and store

        await asyncio.wait_for(inbox.publish_all(batch(5, "c"), timeout=5.0), timeout=20.0)
        info = await js.stream_info("LOST")
        assert info.state.messages >= 10  # "a" and "c" whole; "b"'s first two perhaps
        assert (await js.get_last_msg("LOST", "lost.c")).data == b"c4"
    finally:
        await nc.close()


async def test_a_publish_no_stream_stores_or_the_stream_refuses_fails_with_the_reason(
    nats_server: ManagedNatsServer,
) -> None:
    nc = await connect(nats_server.url, name="test")
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="SMALL", subjects=["small.>"], max_msg_size=16))
        await publish_all(nc, [("small.a", b"fits", None)], timeout=5.0)
        with pytest.raises(PublishRefused, match=r"no stream stores 'nowhere\.a'"):
            await publish_all(nc, [("nowhere.a", b"x", None)], timeout=5.0)
        with pytest.raises(PublishRefused, match="maximum"):
            await publish_all(nc, [("small.b", b"far more than sixteen bytes", None)], 5.0)
        # Neither failure holds a slot or a future: the connection publishes on.
        await publish_all(nc, [("small.c", b"ok", None)], timeout=5.0)
        assert (await js.get_last_msg("SMALL", "small.c")).data == b"ok"
    finally:
        await nc.close()
