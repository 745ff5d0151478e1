"""Object reads by direct get: the whole object, checked, and no consumer on the stream."""

import dataclasses
import os

import pytest
from nats.aio.client import Client
from nats.js.api import ObjectStoreConfig

from driftlock.bus.objects import ObjectReadError, read_object

BUCKET = "objects_test"


async def test_an_object_of_many_chunks_reads_back_whole_without_a_consumer(nc: Client) -> None:
    js = nc.jetstream()
    store = await js.create_object_store(BUCKET, config=ObjectStoreConfig(bucket=BUCKET))
    first, second = os.urandom(300_000), os.urandom(1000)
    await store.put("blob", first)
    await store.put("other", b"x" * 10)
    await store.put("blob", second)  # a new version: its chunks are on a new subject
    await store.put("big", first)

    assert await read_object(js, BUCKET, await store.get_info("big")) == first
    assert await read_object(js, BUCKET, await store.get_info("blob")) == second
    info = await js.stream_info(f"OBJ_{BUCKET}")
    assert info.state.consumer_count == 0


async def test_chunks_that_do_not_match_the_info_are_refused(nc: Client) -> None:
    js = nc.jetstream()
    store = await js.create_object_store(BUCKET, config=ObjectStoreConfig(bucket=BUCKET))
    await store.put("a", b"a" * 5000)
    info = await store.get_info("a")
    other_digest = (await store.put("b", b"b" * 5000)).digest

    with pytest.raises(ObjectReadError, match="digest mismatch"):
        await read_object(js, BUCKET, dataclasses.replace(info, digest=other_digest))
    with pytest.raises(ObjectReadError, match="read 5000 bytes, expected 4999"):
        await read_object(js, BUCKET, dataclasses.replace(info, size=4999))
