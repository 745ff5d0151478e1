"""Ingest over NATS, end to end: a real nats-server, a running node, real LMDB."""

import asyncio
import json
import time

import msgspec
import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg

from driftlock.actors.node import Node
from driftlock.bus.partition import partition_of
from driftlock.state import ActorRecord
from tests.conftest import TEST_PARTITIONS, eventually

T0 = 1_732_550_400.0  # 2024-11-25T16:00:00Z


def record(node: Node, tenant: str, metric: str) -> ActorRecord | None:
    return node.store.read_actor(partition_of(tenant, metric, TEST_PARTITIONS), tenant, metric)


def points_of(node: Node, tenant: str, metric: str) -> int:
    found = record(node, tenant, metric)
    return found.points if found else 0


async def test_every_payload_shape_is_ingested(node: Node, nc: Client) -> None:
    shapes: dict[str, tuple[bytes, dict[str, str] | None, int]] = {
        "object": (b'{"ts": 1732550400.0, "value": 0.93}', None, 1),
        "pair": (b"[1732550401, 0.5]", None, 1),
        "objects": (json.dumps([{"ts": T0 + i, "value": i} for i in range(5)]).encode(), None, 5),
        "pairs": (json.dumps([[T0 + i, i] for i in range(7)]).encode(), None, 7),
        "rfc3339": (b'{"ts": "2024-11-25T16:00:00Z", "value": 1}', None, 1),
        "no-ts": (b'{"value": 2}', None, 1),
        "number": (b"3.5", None, 1),
        "msgpack-pairs": (
            msgspec.msgpack.encode([[T0 + i, float(i)] for i in range(4)]),
            {"Content-Type": "application/msgpack"},
            4,
        ),
        "msgpack-object": (
            msgspec.msgpack.encode({"ts": T0, "value": 1.5}),
            {"Content-Type": "application/msgpack"},
            1,
        ),
    }
    before = time.time()
    for metric, (payload, headers, _) in shapes.items():
        await nc.publish(f"dl.in.shapes.{metric}", payload, headers=headers)
    await nc.flush()

    def all_applied() -> bool:
        return all(points_of(node, "shapes", m) == n for m, (_, _, n) in shapes.items())

    await eventually(all_applied)
    rfc = record(node, "shapes", "rfc3339")
    assert rfc is not None and rfc.last_ts == T0
    no_ts = record(node, "shapes", "no-ts")
    # A missing ts is the time JetStream stored the message.
    assert no_ts is not None and before - 1 <= no_ts.last_ts <= time.time() + 1
    msgpack = record(node, "shapes", "msgpack-pairs")
    assert msgpack is not None and msgpack.last_value == 3.0


async def test_clear_anomaly_reaches_subscribers_and_normal_points_do_not(
    node: Node, nc: Client
) -> None:
    got: list[tuple[float, dict[str, object]]] = []

    async def on_anomaly(msg: Msg) -> None:
        got.append((time.monotonic(), json.loads(msg.data)))

    await nc.subscribe("dl.anomaly.>", cb=on_anomaly)
    rng = np.random.default_rng(3)
    values = 50 + rng.normal(0, 2, 500)
    batch = [[T0 + i, float(v)] for i, v in enumerate(values)]
    for start in range(0, 500, 100):
        await nc.publish("dl.in.acme.latency", json.dumps(batch[start : start + 100]).encode())
    await nc.flush()
    await eventually(lambda: points_of(node, "acme", "latency") == 500)
    assert got == []

    sent = time.monotonic()
    await nc.publish("dl.in.acme.latency", json.dumps({"ts": T0 + 500, "value": 90.0}).encode())

    def anomaly_arrived() -> bool:
        return len(got) == 1

    await eventually(anomaly_arrived, timeout=5)
    arrived, anomaly = got[0]
    print(f"publish -> anomaly: {1000 * (arrived - sent):.1f} ms")
    assert anomaly["tenant"] == "acme" and anomaly["metric"] == "latency"
    assert anomaly["kind"] == "spike" and anomaly["value"] == 90.0 and anomaly["ts"] == T0 + 500
    # A 20-sigma spike is far beyond the stream's own 99.9th percentile: well above the 0.5
    # threshold (score = e / (e + 0.005), e the calibrated surprise beyond anything recent).
    assert isinstance(anomaly["score"], float) and 0.9 <= anomaly["score"] <= 1.0
    expected = anomaly["expected"]
    assert isinstance(expected, list)
    lower, upper = expected
    assert lower < 50 < upper < 90
    assert anomaly["detectors"] == ["robust_level"]
    assert anomaly["id"] == f"acme.latency.{anomaly['seq']}.0"

    js = nc.jetstream()
    stored = await js.get_last_msg("DL_ANOMALIES", "dl.x.anomaly.acme.latency")
    assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == anomaly["id"]
    assert json.loads(stored.data or b"{}")["id"] == anomaly["id"]

    # Normal points after the spike stay quiet.
    after = [[T0 + 501 + i, float(v)] for i, v in enumerate(50 + rng.normal(0, 2, 200))]
    await nc.publish("dl.in.acme.latency", json.dumps(after).encode())
    await nc.flush()
    await eventually(lambda: points_of(node, "acme", "latency") == 701)
    await asyncio.sleep(0.1)
    assert len(got) == 1


async def test_streams_are_independent_actors(node: Node, nc: Client) -> None:
    for i in range(30):
        payload = json.dumps([[T0 + j, float(i)] for j in range(10)]).encode()
        await nc.publish(f"dl.in.t{i % 3}.m{i}", payload)
    await nc.flush()
    await eventually(lambda: all(points_of(node, f"t{i % 3}", f"m{i}") == 10 for i in range(30)))
    for i in range(30):
        rec = record(node, f"t{i % 3}", f"m{i}")
        assert rec is not None and rec.last_value == float(i)
    assert node.store.statistics().actors == 30
