"""The partition feed against a real nats-server: a backlog stays in the stream, not in the
node, in messages and in bytes, and every message still arrives once, in order."""

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, ConsumerInfo

from driftlock.bus import feed as feed_module
from driftlock.bus.feed import Delivery, PartitionFeed


async def backlog(nc: Client, count: int, size: int) -> None:
    js = nc.jetstream()
    await js.add_stream(name="FEEDTEST", subjects=["feedtest.>"])
    body = b"x" * size
    for _ in range(count):
        await js.publish("feedtest.a", body)


async def take_all(feed: PartitionFeed, count: int, limit: int, batch: int) -> list[Delivery]:
    """Take batches as a slow worker would, checking after each pause what the feed holds."""
    taken: list[Delivery] = []
    while len(taken) < count:
        taken += await feed.next_batch(batch, wait_s=2.0)
        await asyncio.sleep(0.05)  # the server has time to deliver whatever was requested
        assert feed.held <= limit
    return taken


async def test_a_backlog_of_small_messages_is_held_two_pull_batches_at_most(nc: Client) -> None:
    await backlog(nc, 1000, 16)
    feed = PartitionFeed(nc, nc.jetstream(), stream="FEEDTEST", filter_subject="feedtest.a",
                         pull_batch=50)  # fmt: skip
    await feed.start(1)
    try:
        taken = await take_all(feed, 1000, limit=100, batch=50)
    finally:
        await feed.stop()
    assert [d.seq for d in taken] == list(range(1, 1001))


async def test_large_messages_are_requested_by_the_byte_budget(nc: Client) -> None:
    await backlog(nc, 200, 10_000)
    feed = PartitionFeed(nc, nc.jetstream(), stream="FEEDTEST", filter_subject="feedtest.a",
                         pull_batch=2000, max_bytes=50_000)  # fmt: skip
    await feed.start(1)
    try:
        first = await feed.next_batch(10_000, wait_s=2.0)
        # Before it knew their size, the feed asked for a guess's worth (50 kB at 1 kB each)
        # in one request; that request stays outstanding until all 48 have come.
        assert 0 < len(first) <= 48
        while len(first) < 48:
            first += await feed.next_batch(10_000, wait_s=2.0)
        assert feed.request_size() == 5  # 50 kB at ~10 kB each
        taken = first + await take_all(feed, 200 - len(first), limit=2 * 5, batch=2000)
    finally:
        await feed.stop()
    assert [d.seq for d in taken] == list(range(1, 201))


async def test_a_creation_retried_after_a_timeout_leaves_one_consumer(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first try times out before the server answers, yet the server creates what it
    asked for: the retry must find that consumer, not add another."""
    await backlog(nc, 10, 16)
    monkeypatch.setattr(feed_module, "CREATE_TIMEOUTS_S", (1e-6, 5.0))
    feed = PartitionFeed(nc, nc.jetstream(), stream="FEEDTEST", filter_subject="feedtest.a",
                         pull_batch=50)  # fmt: skip
    await feed.start(1)
    try:
        taken = await take_all(feed, 10, limit=100, batch=50)
        await asyncio.sleep(0.5)  # every request has reached the server
        consumers = await nc.jetstream().consumers_info("FEEDTEST")
    finally:
        await feed.stop()
    assert [d.seq for d in taken] == list(range(1, 11))
    assert len(consumers) == 1


async def test_a_name_that_never_gets_an_answer_is_given_up_for_a_fresh_one(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster that lost a server, nats-server 2.9 places some new consumers on the dead
    peer and never answers their creation (tests/test_nats_cluster.py meets it for real).
    One server cannot do that, so this wraps the creation call: every request for the first
    name hangs, as it would on the dead peer. The feed must move on to another name."""
    await backlog(nc, 10, 16)
    monkeypatch.setattr(feed_module, "CREATE_TIMEOUTS_S", (0.2, 0.2, 0.2, 5.0))
    js = nc.jetstream()
    real_add_consumer = js.add_consumer
    names: list[str] = []

    async def add_consumer(stream: str, config: ConsumerConfig, **kw: Any) -> ConsumerInfo:
        assert config.name is not None
        names.append(config.name)
        if config.name == names[0]:  # the request goes unanswered until its timeout
            await asyncio.sleep(kw["timeout"])
            raise TimeoutError
        return await real_add_consumer(stream, config, **kw)

    monkeypatch.setattr(js, "add_consumer", add_consumer)
    feed = PartitionFeed(nc, js, stream="FEEDTEST", filter_subject="feedtest.a", pull_batch=50)
    await feed.start(1)
    try:
        taken = await take_all(feed, 10, limit=100, batch=50)
    finally:
        await feed.stop()
    assert [d.seq for d in taken] == list(range(1, 11))
    assert names[0] == names[1] != names[2]
