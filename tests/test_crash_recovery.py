"""kill -9 a node in the middle of a steady stream and start it again: the final state and the
anomalies equal those of an uninterrupted run over the same events, none applied twice, none
skipped, no anomaly published twice."""

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import numpy as np
from nats.aio.msg import Msg

from driftlock.bus.server import ManagedNatsServer
from driftlock.bus.subjects import Subjects
from driftlock.state import ActorRecord, StateStore
from tests.conftest import TEST_PARTITIONS, eventually
from tests.processes import NodeProcess

T0 = 1_732_550_400.0
STREAMS = [(f"t{i % 4}", f"m{i}") for i in range(16)]
MESSAGES_PER_STREAM = 150
POINTS_PER_MESSAGE = 10
TOTAL_POINTS = len(STREAMS) * MESSAGES_PER_STREAM * POINTS_PER_MESSAGE

Records = dict[tuple[str, str], ActorRecord]


def make_events() -> list[tuple[str, bytes]]:
    """The same event sequence for both runs: noise, spikes, dips and one level shift each."""
    rng = np.random.default_rng(11)
    series = {}
    n = MESSAGES_PER_STREAM * POINTS_PER_MESSAGE
    for k, stream in enumerate(STREAMS):
        values = 100 + rng.normal(0, 3, n)
        values[200 + 7 * k :: 211] += 60
        values[300 + 5 * k :: 263] -= 60
        values[900 + 13 * k :] += 40
        series[stream] = values
    events = []
    for m in range(MESSAGES_PER_STREAM):
        for tenant, metric in STREAMS:
            lo = m * POINTS_PER_MESSAGE
            points = [
                [T0 + i, round(float(v), 6)]
                for i, v in enumerate(series[(tenant, metric)][lo : lo + POINTS_PER_MESSAGE], lo)
            ]
            events.append((Subjects().ingest(tenant, metric), json.dumps(points).encode()))
    return events


def read_records(data_dir: Path) -> Records:
    store = StateStore(data_dir / "state")
    try:
        return {
            (tenant, metric): record
            for p in range(TEST_PARTITIONS)
            for tenant, metric, record in store.iter_actors(p)
        }
    finally:
        store.close()


def applied_points(data_dir: Path) -> int:
    if not (data_dir / "state").exists():
        return 0
    return sum(r.points for r in read_records(data_dir).values())


async def run(base: Path, kill_at: int | None) -> tuple[Records, list[dict[str, Any]], int]:
    """Publish the events steadily into a fresh server with one node; if kill_at is set, kill -9
    the node after that many messages and start it again. Returns the final records, every
    anomaly a subscriber received, and the points applied when the node was killed."""
    server = ManagedNatsServer(
        base_dir=base / "nats", subjects=Subjects(), partitions=TEST_PARTITIONS
    )
    await server.start()
    node = NodeProcess(
        nats_url=server.url, data_dir=base / "node", partitions=TEST_PARTITIONS, name="node"
    )
    received: list[dict[str, Any]] = []

    async def on_anomaly(msg: Msg) -> None:
        received.append(json.loads(msg.data))

    nc = await nats.connect(server.url)
    applied_at_kill = -1
    try:
        await nc.subscribe("dl.anomaly.>", cb=on_anomaly)
        await node.start()
        for i, (subject, payload) in enumerate(make_events()):
            if i == kill_at:
                await nc.flush()
                await asyncio.sleep(0.3)  # let the node get well into the stream
                node.kill()
                applied_at_kill = applied_points(base / "node")
                await node.start()
            await nc.publish(subject, payload)
            if i % 50 == 49:
                await nc.flush()
                await asyncio.sleep(0.01)  # a steady stream, not one burst
        await nc.flush()

        def caught_up() -> bool:
            return applied_points(base / "node") == TOTAL_POINTS

        await eventually(caught_up, timeout=60, interval=0.1)
        assert node.terminate() == 0
        await asyncio.sleep(0.3)  # the last republished anomalies reach the subscriber
    finally:
        node.ensure_stopped()
        await nc.close()
        server.stop()
    return read_records(base / "node"), received, applied_at_kill


def content(anomaly: dict[str, Any]) -> tuple[Any, ...]:
    """What must match between runs; ids embed stream sequences, which differ between the two
    servers because each node start stores its mapping probes in the stream."""
    return (
        anomaly["tenant"],
        anomaly["metric"],
        anomaly["ts"],
        anomaly["value"],
        anomaly["score"],
        tuple(anomaly["expected"]),
        anomaly["kind"],
        anomaly["index"],
    )


async def test_kill_9_and_restart_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    crashed, crashed_anomalies, applied_at_kill = await run(tmp_path / "crash", kill_at=1100)
    reference, reference_anomalies, _ = await run(tmp_path / "reference", kill_at=None)

    assert 0 < applied_at_kill < TOTAL_POINTS, "the kill must land mid-stream"
    assert sum(r.points for r in crashed.values()) == TOTAL_POINTS
    assert crashed == reference  # detector state included: nothing applied twice or skipped

    ids = Counter(a["id"] for a in crashed_anomalies)
    assert [i for i, n in ids.items() if n > 1] == []  # no anomaly published twice
    assert len(reference_anomalies) > 50
    assert sorted(map(content, crashed_anomalies)) == sorted(map(content, reference_anomalies))
    assert sum(r.anomalies for r in crashed.values()) == len(crashed_anomalies)
    late = [
        a for a in crashed_anomalies if a["ts"] >= T0 + 1100 // len(STREAMS) * POINTS_PER_MESSAGE
    ]
    assert late, "anomalies after the restart are part of the comparison"


async def test_a_full_replay_publishes_no_anomaly_twice(tmp_path: Path) -> None:
    """Losing the node's LMDB entirely (the worst case of a crash between publishing and
    committing) replays every event: the state is rebuilt identically, and DL_ANOMALIES
    swallows every re-published anomaly, so subscribers see each exactly once."""
    server = ManagedNatsServer(
        base_dir=tmp_path / "nats", subjects=Subjects(), partitions=TEST_PARTITIONS
    )
    await server.start()
    received: list[dict[str, Any]] = []

    async def on_anomaly(msg: Msg) -> None:
        received.append(json.loads(msg.data))

    nc = await nats.connect(server.url)
    try:
        await nc.subscribe("dl.anomaly.>", cb=on_anomaly)
        node = NodeProcess(
            nats_url=server.url, data_dir=tmp_path / "node", partitions=TEST_PARTITIONS, name="node"
        )
        await node.start()
        for subject, payload in make_events():
            await nc.publish(subject, payload)
        await nc.flush()
        await eventually(lambda: applied_points(tmp_path / "node") == TOTAL_POINTS, timeout=60)
        assert node.terminate() == 0
        first = read_records(tmp_path / "node")
        await asyncio.sleep(0.3)
        published_once = len(received)
        assert published_once > 50

        replay = NodeProcess(
            nats_url=server.url,
            data_dir=tmp_path / "fresh",
            partitions=TEST_PARTITIONS,
            name="replay",
        )
        await replay.start()
        await eventually(lambda: applied_points(tmp_path / "fresh") == TOTAL_POINTS, timeout=60)
        assert replay.terminate() == 0
        await asyncio.sleep(0.3)
        assert read_records(tmp_path / "fresh") == first
        assert len(received) == published_once
        info = await nc.jetstream().stream_info("DL_ANOMALIES")
        assert info.state.messages == published_once
    finally:
        await nc.close()
        server.stop()
