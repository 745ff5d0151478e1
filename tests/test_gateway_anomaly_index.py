"""The gateway's in-memory copy of DL_ANOMALIES answers every query exactly as a scan of the
stream does (filters, scan budget, cursor paging, time range), and hands a query back to the
stream when it cannot be sure (not loaded, or reaching past what it dropped)."""

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import msgspec
import nats
import pytest
from nats.aio.client import Client

from driftlock.bus.server import ManagedNatsServer
from driftlock.bus.streams import StreamLimits, ensure_streams
from driftlock.bus.subjects import Subjects
from driftlock.gateway import anomaly_index
from driftlock.gateway.anomalies_api import scan_stream
from driftlock.gateway.anomaly_index import AnomalyIndex
from driftlock.gateway.models import AnomalyQuery
from tests.conftest import TEST_PARTITIONS, eventually

if TYPE_CHECKING:
    from driftlock.gateway.server import GatewayServer

KINDS = ["spike", "dip", "level_shift"]


def anomaly(tenant: str, metric: str, i: int) -> dict[str, Any]:
    return {
        "id": f"{tenant}.{metric}.{i}.0",
        "tenant": tenant,
        "metric": metric,
        "ts": 1_700_000_000.0 + i,
        "value": float(i),
        "score": (i % 10) / 10,
        "expected": [0.0, 1.0],
        "kind": KINDS[i % 3],
        "detectors": ["robust_level"],
        "seq": i,
        "index": 0,
        "detected_at": 1_700_000_000.0 + i,
        "schema": 1,
    }


async def publish(nc: Client, subjects: Subjects, tenants: list[str], n: int) -> float:
    """n anomalies per tenant over three metrics; returns a time between the two halves."""
    js = nc.jetstream()
    middle = 0.0
    for i in range(n):
        if i == n // 2:
            await asyncio.sleep(0.01)
            middle = time.time()
            await asyncio.sleep(0.01)
        for tenant in tenants:
            metric = ["cpu:a", "cpu:b", "mem"][i % 3]
            data = json.dumps(anomaly(tenant, metric, i)).encode()
            await js.publish(subjects.anomaly_store(tenant, metric), data)
    return middle


QUERIES: list[dict[str, Any]] = [
    {},
    {"limit": 7},
    {"limit": 1},
    {"metric": "mem", "limit": 5},
    {"metric_pattern": "cpu:*", "limit": 4},
    {"min_score": 0.75, "limit": 3},
    {"kind": "dip", "limit": 6},
    {"kind": "spike", "min_score": 0.9, "limit": 1},
    {"metric": "nope"},
]


def as_dict(a: Any) -> dict[str, Any]:
    """The copy answers with each anomaly's JSON, the stream scan with decoded ones."""
    return a if isinstance(a, dict) else msgspec.json.decode(a)


async def pages(source: Any, tenant: str, params: dict[str, Any]) -> list[Any]:
    """Every page a client gets by following next_cursor."""
    out: list[Any] = []
    cursor = None
    for _ in range(200):
        q = AnomalyQuery.model_validate({**params, **({"cursor": cursor} if cursor else {})})
        page = await source(tenant, q)
        assert page is not None
        anomalies, cursor = page
        out.append(([as_dict(a)["id"] for a in anomalies], cursor))
        if cursor is None:
            return out
    raise AssertionError("paging did not end")


async def test_the_copy_answers_as_the_stream_does(nc: Client) -> None:
    subjects = Subjects()
    js = nc.jetstream()
    await ensure_streams(js, subjects, TEST_PARTITIONS, StreamLimits(86400, 86400, 3600))
    middle = await publish(nc, subjects, ["t1", "t2"], 60)
    index = AnomalyIndex(nc, js, subjects, 86400)
    await index.start()
    try:
        await eventually(lambda: index.size == 120)

        async def from_stream(tenant: str, q: AnomalyQuery) -> Any:
            return await scan_stream(nc, js, subjects, tenant, q)

        for params in [
            *QUERIES,
            {"since": middle},
            {"until": middle},
            {"since": middle, "limit": 3},
        ]:
            for tenant in ("t1", "t2", "nobody"):
                expected = await pages(from_stream, tenant, params)
                assert await pages(index.query, tenant, params) == expected, params

        # Published after loading: followed live.
        await publish(nc, subjects, ["t3"], 5)
        await eventually(lambda: index.size == 125)
        assert await pages(index.query, "t3", {}) == await pages(from_stream, "t3", {})
    finally:
        await index.stop()


async def test_a_query_past_what_the_copy_dropped_goes_to_the_stream(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(anomaly_index, "PER_TENANT", 20)
    subjects = Subjects()
    js = nc.jetstream()
    await ensure_streams(js, subjects, TEST_PARTITIONS, StreamLimits(86400, 86400, 3600))
    index = AnomalyIndex(nc, js, subjects, 86400)
    assert await index.query("t1", AnomalyQuery()) is None  # not loaded yet
    await publish(nc, subjects, ["t1"], 30)
    await index.start()
    try:
        await eventually(lambda: index.size >= 18)
        assert await index.query("t1", AnomalyQuery()) is None  # its oldest were dropped
        assert await index.query("t1", AnomalyQuery(cursor=1)) is None
        newest = await index.query("t1", AnomalyQuery(cursor=25))
        assert newest is not None
        assert [as_dict(a)["value"] for a in newest[0]] == [24.0, 25.0, 26.0, 27.0, 28.0, 29.0]
    finally:
        await index.stop()


async def test_the_copy_follows_the_stream_across_a_nats_server_restart(
    gateway: "GatewayServer", nats_server: ManagedNatsServer
) -> None:
    gw = gateway.app.gateway
    assert gw is not None and gw.anomalies is not None
    index = gw.anomalies
    await eventually(lambda: index.ready)
    nats_server.kill()
    await nats_server.start()  # same port and store
    await eventually(lambda: gw.nc.is_connected, timeout=15)
    other = await nats.connect(nats_server.url)
    try:
        await publish(other, gw.subjects, ["late"], 3)
    finally:
        await other.close()

    def loaded() -> bool:
        return index.ready and index.size >= 3

    await eventually(loaded, timeout=15)
    page = await index.query("late", AnomalyQuery())
    assert page is not None and [as_dict(a)["value"] for a in page[0]] == [0.0, 1.0, 2.0]


async def test_past_the_total_cap_the_largest_tenant_drops_its_oldest(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(anomaly_index, "TOTAL", 25)
    subjects = Subjects()
    js = nc.jetstream()
    await ensure_streams(js, subjects, TEST_PARTITIONS, StreamLimits(86400, 86400, 3600))
    await publish(nc, subjects, ["big"], 20)
    await publish(nc, subjects, ["small"], 5)
    await publish(nc, subjects, ["small"], 1)
    index = AnomalyIndex(nc, js, subjects, 86400)
    await index.start()
    try:
        await eventually(lambda: index.ready)
        assert index.size <= 25
        assert await index.query("big", AnomalyQuery()) is None  # to the stream
        small = await index.query("small", AnomalyQuery())
        assert small is not None and len(small[0]) == 6
    finally:
        await index.stop()
