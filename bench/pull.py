"""Raw JetStream consume ceiling: nats-py's `fetch()` against DriftLock's pull feed (pull
requests kept outstanding, messages on one plain core subscription), same messages, same run.

    python -m bench.pull [--messages N] [--size BYTES]
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import nats
import uvloop
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from bench.common import print_table, write_results
from driftlock.bus.feed import PartitionFeed
from driftlock.bus.server import ManagedNatsServer
from driftlock.bus.subjects import Subjects


async def fill(js: JetStreamContext, messages: int, size: int) -> float:
    payload = b"x" * size
    started = time.perf_counter()
    futures = [await js.publish_async("bench.p.0.t.m", payload) for _ in range(messages)]
    await asyncio.gather(*futures)
    return messages / (time.perf_counter() - started)


async def consume_fetch(js: JetStreamContext, messages: int) -> float:
    # AckNone on both paths: DriftLock tracks its position in LMDB, not with acks.
    sub = await js.pull_subscribe(
        "bench.>", durable="fetch", config=ConsumerConfig(ack_policy=AckPolicy.NONE)
    )
    got = 0
    started = time.perf_counter()
    while got < messages:
        got += len(await sub.fetch(1000, timeout=5))
    return messages / (time.perf_counter() - started)


async def consume_feed(nc: Client, js: JetStreamContext, messages: int) -> float:
    feed = PartitionFeed(nc, js, stream="BENCH", filter_subject="bench.>", pull_batch=2000)
    await feed.start(1)
    got = 0
    started = time.perf_counter()
    while got < messages:
        got += len(await feed.next_batch(100_000))
    rate = messages / (time.perf_counter() - started)
    await feed.stop()
    return rate


async def main(messages: int, size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = ManagedNatsServer(base_dir=Path(tmp), subjects=Subjects(), partitions=1)
        await server.start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="BENCH", subjects=["bench.>"]))
            publish = await fill(js, messages, size)
            fetch = await consume_fetch(js, messages)
            feed = await consume_feed(nc, js, messages)
            await nc.close()
        finally:
            server.stop()
    results = {"publish_async": publish, "fetch": fetch, "feed": feed}
    print_table(
        f"JetStream consume, {messages:,} messages of {size} bytes (msgs/s)",
        ["path", "msgs/s", "vs fetch()"],
        [[k, v, f"{v / fetch:.2f}x"] for k, v in results.items()],
    )
    return results


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    results = uvloop.run(main(args.messages, args.size))
    print("wrote", write_results("pull", {"messages": args.messages, "size": args.size, **results}))


if __name__ == "__main__":
    cli()
