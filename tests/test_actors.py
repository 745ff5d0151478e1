"""Stream actors leave memory when idle and come back from LMDB with their state; the node's
Prometheus endpoint reports what happened."""

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from driftlock.actors.actor import StreamActor
from driftlock.actors.node import Node
from driftlock.actors.partition import IDLE_S, QUIET_GAPS, Pace, _next_tick
from driftlock.actors.scoring import (
    CALL_US,
    INLINE_BUDGET_US,
    POINT_US,
    Slice,
    _concatenate,
)
from driftlock.bus.partition import partition_of
from driftlock.detect import Detector
from driftlock.detect.state import FloatArray
from driftlock.settings import Settings
from driftlock.wire.payload import decode_points, single_point
from tests.conftest import TEST_PARTITIONS, eventually, scrape

T0 = 1_732_550_400.0


@pytest.fixture
async def quick_passivating_node(node_settings: Settings) -> AsyncIterator[Node]:
    node = Node(node_settings.model_copy(update={"passivate_after_s": 0.3}))
    await node.start()
    yield node
    await node.shutdown()


def active(node: Node) -> int:
    return sum(w.active_actors for w in node.supervisor.statistics())


def applied_events(node: Node) -> float:
    """The node's count of applied points: a commit's are counted on the event loop once
    its transaction is done, a moment after LMDB shows its records."""
    return metric(scrape(node.metrics_port), "driftlock_events_applied_total")


def metric(text: str, name: str, labels: str = "") -> float:
    found = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    assert found, f"{name}{labels} not exported"
    return float(found.group(1))


async def test_idle_actors_are_passivated_and_reactivated_with_their_state(
    quick_passivating_node: Node, nc: Client
) -> None:
    node = quick_passivating_node
    rng = np.random.default_rng(5)
    values = 20 + rng.normal(0, 1, 300)
    await nc.publish(
        "dl.in.acme.io", json.dumps([[T0 + i, v] for i, v in enumerate(values[:200])]).encode()
    )
    await nc.publish("dl.in.acme.net", json.dumps([[T0, 1.0]]).encode())
    await nc.flush()
    p = partition_of("acme", "io", TEST_PARTITIONS)

    def both_applied() -> bool:
        io = node.store.read_actor(p, "acme", "io")
        return io is not None and io.points == 200 and active(node) == 2

    await eventually(both_applied)

    def passivated() -> bool:
        return active(node) == 0

    await eventually(passivated, timeout=5)
    text = scrape(node.metrics_port)
    assert metric(text, "driftlock_actors", '{state="active"}') == 0
    assert metric(text, "driftlock_actors", '{state="passivated"}') == 2

    # Reactivated from LMDB: the detector continues where it was, so a spike is caught at
    # once (a fresh actor would still be warming up and stay silent).
    anomalies: list[dict[str, object]] = []

    async def on_anomaly(msg: Msg) -> None:
        anomalies.append(json.loads(msg.data))

    await nc.subscribe("dl.anomaly.acme.io", cb=on_anomaly)
    await nc.publish("dl.in.acme.io", json.dumps([T0 + 200, 60.0]).encode())
    await nc.flush()
    await eventually(lambda: len(anomalies) == 1)

    def committed() -> bool:
        # Anomalies go out before the batch commits (a crash between replays them and
        # DL_ANOMALIES drops the copies), so the record may lag the message by a moment.
        record = node.store.read_actor(p, "acme", "io")
        return record is not None and record.points == 201

    await eventually(committed)
    io = node.store.read_actor(p, "acme", "io")
    assert io is not None and io.anomalies == 1

    await eventually(lambda: applied_events(node) == 202)
    text = scrape(node.metrics_port)
    assert metric(text, "driftlock_messages_processed_total") == 3
    assert metric(text, "driftlock_anomalies_total", '{kind="spike"}') == 1
    assert metric(text, "driftlock_batch_seconds_count") >= 2
    assert metric(text, "driftlock_partition_lag", f'{{partition="{p}"}}') == 0
    assert metric(text, "driftlock_partition_last_applied_seq", f'{{partition="{p}"}}') > 0
    assert metric(text, "driftlock_lmdb_size_bytes") > 0


async def test_the_active_actor_limit_evicts_and_evicted_streams_continue_from_lmdb(
    node_settings: Settings, nc: Client
) -> None:
    """One actor in memory for three streams: every round brings two back from LMDB, and
    each stream ends exactly where one uninterrupted actor fed the same points ends."""
    node = Node(node_settings.model_copy(update={"max_active_actors": 1}))
    await node.start()
    try:
        rng = np.random.default_rng(11)
        streams = ["a", "b", "c"]
        series = {m: 50 + rng.normal(0, 2, 300) for m in streams}
        series["a"][250] = 120.0  # a spike only a warm detector catches
        for r in range(3):
            for m in streams:
                chunk = [[T0 + i, series[m][i]] for i in range(100 * r, 100 * (r + 1))]
                await nc.publish(f"dl.in.acme.{m}", json.dumps(chunk).encode())
            await nc.flush()

            def round_committed(points: int = 100 * (r + 1)) -> bool:
                records = [node.store.read_actor(_p(m), "acme", m) for m in streams]
                return all(rec is not None and rec.points == points for rec in records)

            await eventually(round_committed)
            assert active(node) <= 1

        text = scrape(node.metrics_port)
        assert metric(text, "driftlock_actors_max_active") == 1
        assert metric(text, "driftlock_actor_evictions_total", '{cause="limit"}') >= 6
        assert metric(text, "driftlock_actor_activations_total", '{source="new"}') == 3
        assert metric(text, "driftlock_actor_activations_total", '{source="lmdb"}') >= 4

        detector = Detector(node_settings.detector)
        for m in streams:
            reference = StreamActor("acme", m, None)
            ts = T0 + np.arange(300, dtype=np.float64)
            seqs = np.zeros(300, dtype=np.int64)
            found = reference.apply(detector, ts, series[m], seqs, np.arange(300))
            assert node.store.read_actor(_p(m), "acme", m) == reference.record
            assert (m == "a") == bool(found)  # the spike, caught after two evictions
    finally:
        await node.shutdown()


async def test_workers_go_on_while_commits_wait_and_never_read_an_actor_behind_its_commit(
    node_settings: Settings, nc: Client
) -> None:
    """The store's writer is held (a write transaction open elsewhere, as a long fsync would
    hold it): the node goes on applying batches and publishing anomalies, and an actor that
    left memory (a limit of one actor for three streams) comes back from its unfinished
    commit, not from LMDB, which has nothing yet. Once the writer runs again every stream's
    record is the one an uninterrupted actor ends with."""
    node = Node(node_settings.model_copy(update={"max_active_actors": 1}))
    await node.start()
    anomalies: list[dict[str, object]] = []

    async def on_anomaly(msg: Msg) -> None:
        anomalies.append(json.loads(msg.data))

    await nc.subscribe("dl.anomaly.acme.>", cb=on_anomaly)
    blocker = node.store._env.begin(write=True)
    try:
        rng = np.random.default_rng(12)
        streams = ["a", "b", "c"]
        series = {m: 50 + rng.normal(0, 2, 300) for m in streams}
        series["a"][250] = 120.0  # caught only by an actor that kept its first 250 points
        for r in range(3):
            for m in streams:
                chunk = [[T0 + i, series[m][i]] for i in range(100 * r, 100 * (r + 1))]
                await nc.publish(f"dl.in.acme.{m}", json.dumps(chunk).encode())
                await nc.flush()
                await asyncio.sleep(0.2)  # one message per batch: three evictions a round
        await eventually(lambda: len(anomalies) == 1)
        assert anomalies[0]["metric"] == "a" and anomalies[0]["ts"] == T0 + 250
        assert all(node.store.read_actor(_p(m), "acme", m) is None for m in streams)
    finally:
        blocker.abort()
    try:

        def all_committed() -> bool:
            records = [node.store.read_actor(_p(m), "acme", m) for m in streams]
            return all(rec is not None and rec.points == 300 for rec in records)

        await eventually(all_committed)
        detector = Detector(node_settings.detector)
        for m in streams:
            reference = StreamActor("acme", m, None)
            ts = T0 + np.arange(300, dtype=np.float64)
            reference.apply(detector, ts, series[m], np.zeros(300, np.int64), np.arange(300))
            assert node.store.read_actor(_p(m), "acme", m) == reference.record
        await eventually(lambda: applied_events(node) == 900)
        text = scrape(node.metrics_port)
        assert metric(text, "driftlock_actor_activations_total", '{source="lmdb"}') == 0
    finally:
        await node.shutdown()


async def test_a_partition_detecting_a_batch_holds_up_no_other_and_is_cancelled_only_after_it(
    node_settings: Settings, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large batch is scored on the node's detection threads: while one partition's batch
    is held in its detector, another partition's batch is detected and applied. A partition
    task cancelled meanwhile ends only once its thread let go of the actors."""
    release, entered = threading.Event(), threading.Event()
    threads: set[str] = set()
    detect_joined = Detector.detect_joined

    def held_detect(self: Detector, states: Any, values: Any, *args: Any) -> Any:
        first = values[0]
        if first in (999.0, 1.0):  # this test's points (not the detector's warm-up)
            threads.add(threading.current_thread().name)
        if first == 999.0:
            entered.set()
            assert release.wait(10.0)
        return detect_joined(self, states, values, *args)

    monkeypatch.setattr(Detector, "detect_joined", held_detect)
    slow, other = "slow", next(m for m in ("b", "c", "d", "e") if _p(m) != _p("slow"))
    node = Node(node_settings.model_copy(update={"detect_threads": 2}))
    await node.start()
    try:
        await nc.publish(f"dl.in.acme.{slow}", large_batch(999.0))
        await eventually(entered.is_set)
        await nc.publish(f"dl.in.acme.{other}", large_batch(1.0))
        await eventually(lambda: node.store.read_actor(_p(other), "acme", other) is not None)
        assert len(threads) == 2 and all(name.startswith("detect") for name in threads)

        task = node.supervisor._tasks[_p(slow)]
        task.cancel()
        await asyncio.sleep(0.3)
        assert not task.done()  # its actors are still the detection thread's
        release.set()
        await eventually(task.done)
        assert task.cancelled()
    finally:
        release.set()
        await node.shutdown()


@pytest.mark.parametrize("detect_threads", [1, 2])
async def test_with_one_detection_thread_a_small_batch_is_scored_on_the_event_loop(
    node_settings: Settings, nc: Client, monkeypatch: pytest.MonkeyPatch, detect_threads: int
) -> None:
    """With one thread (a node of a process per core) a small batch is scored on the loop
    and a large one on the thread; with more, every batch goes to the threads."""
    threads: dict[float, str] = {}
    detect_joined = Detector.detect_joined

    def noted_detect(self: Detector, states: Any, values: Any, *args: Any) -> Any:
        threads.setdefault(float(values[0]), threading.current_thread().name)
        return detect_joined(self, states, values, *args)

    monkeypatch.setattr(Detector, "detect_joined", noted_detect)
    node = Node(node_settings.model_copy(update={"detect_threads": detect_threads}))
    await node.start()
    try:
        # One after the other: together, the two would be scored in one call (scoring.py).
        await nc.publish("dl.in.acme.small", json.dumps([T0, 5.0]).encode())
        await eventually(lambda: 5.0 in threads)
        await nc.publish("dl.in.acme.large", large_batch(7.0))
        await eventually(lambda: 7.0 in threads)
    finally:
        await node.shutdown()
    on_loop = threads[5.0] == threading.current_thread().name  # the node runs on this loop
    assert on_loop == (detect_threads == 1)
    assert threads[7.0].startswith("detect")


async def test_a_backlog_of_small_streams_is_scored_a_piece_a_call_as_each_alone(
    node_settings: Settings, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog of single-point messages over a dozen streams of one partition: the worker
    scores a piece's streams in one detector call, and every stream ends with the record
    that scoring it alone makes."""
    calls: list[int] = []
    detect_joined = Detector.detect_joined

    def counted(self: Detector, states: Any, *args: Any) -> Any:
        calls.append(len(states))
        return detect_joined(self, states, *args)

    monkeypatch.setattr(Detector, "detect_joined", counted)
    backlog = await Backlog.publish(node_settings, nc, seed=5)
    node = Node(node_settings)
    await node.start()
    try:
        await eventually(lambda: backlog.applied(node))
        assert max(calls) > 1  # a piece's streams, in one call
        backlog.check_scored_as_each_alone(node)
    finally:
        await node.shutdown()


@pytest.mark.parametrize(
    ("interval_s", "max_active", "gathered"),
    [(0.0, 50_000, False), (3600.0, 50_000, True), (3600.0, 4 * 4 * TEST_PARTITIONS, False)],
    ids=["a-commit-per-batch", "gathered", "at-most-4-streams-waiting"],
)
async def test_a_backlog_commits_each_stream_once_for_many_batches(
    node_settings: Settings, nc: Client, interval_s: float, max_active: int, gathered: bool
) -> None:
    """A backlog of 12 interleaved streams pulled a dozen messages at a time: with a commit
    interval, a stream's state is written once for the batches it was in until the worker
    went idle, not once per batch, and it is the state that scoring the stream alone makes.
    An hour's interval never falls due here: the records land because the partition went
    quiet. What waits for a commit stays in memory, so it is bounded like a piece: with room
    for 4 streams a piece, 4 streams at most wait, and every batch of 12 commits."""
    settings = node_settings.model_copy(
        update={"pull_batch": 12, "commit_interval_s": interval_s, "max_active_actors": max_active}
    )
    backlog = await Backlog.publish(settings, nc, seed=7)
    node = Node(settings)
    await node.start()
    try:

        def written() -> float:
            return metric(scrape(node.metrics_port), "driftlock_state_records_written_total")

        await eventually(lambda: backlog.applied(node) and written() >= len(backlog.series))
        written_states = written()
        if gathered:
            assert written_states <= len(backlog.series) * POINTS / 3
        else:  # a commit per batch or piece: a stream is in most of them
            assert written_states >= len(backlog.series) * POINTS / 2
        backlog.check_scored_as_each_alone(node)
    finally:
        await node.shutdown()


async def test_a_steady_flow_commits_on_the_ticks_not_at_every_pause(
    node_settings: Settings, nc: Client
) -> None:
    """A message every 80 ms on a stream of each partition (the partitions 10 ms apart), with
    a 1 s commit interval: a pause of 80 ms is no silence for a partition whose messages come
    that often (QUIET_GAPS), so each stream is written at the ticks, a few times, not after
    nearly every message as a fixed 50 ms silence had it. Once the flow stops, every
    partition goes quiet and commits the rest."""
    settings = node_settings.model_copy(update={"commit_interval_s": 1.0})
    streams = {_p(m): m for m in (f"m{i}" for i in range(300))}
    assert len(streams) == TEST_PARTITIONS
    node = Node(settings)
    await node.start()
    try:

        def written() -> float:
            return metric(scrape(node.metrics_port), "driftlock_state_records_written_total")

        before = written()
        rounds = 30
        for i in range(rounds):
            for m in streams.values():
                point = json.dumps([T0 + 60.0 * i, 5.0 + i % 3]).encode()
                await nc.publish(f"dl.in.acme.{m}", point)
                await nc.flush()
                await asyncio.sleep(0.01)
        messages = rounds * len(streams)

        def all_applied() -> bool:
            records = [node.store.read_actor(p, "acme", m) for p, m in streams.items()]
            return all(r is not None and r.points == rounds for r in records)

        await eventually(all_applied)
        assert written() - before <= messages / 4
    finally:
        await node.shutdown()


def test_a_partition_is_quiet_after_several_of_its_usual_gaps() -> None:
    """Quiet is relative to the partition's pace, as its messages were stored: 10 gaps of a
    steady flow, 50 ms after a backlog; a long silence counts as one commit interval, so a
    burst after it is learnt in a few batches and is durable soon after it ends."""
    steady = Pace(interval_s=0.5)
    for i in range(40):
        steady.learn(100.0 + 0.016 * i, 1)
    assert 0.14 < steady.quiet_s() < 0.18
    backlog = Pace(interval_s=0.5)
    for i in range(40):
        backlog.learn(100.0 + 0.001 * i, 100)
    assert backlog.quiet_s() == IDLE_S
    burst = Pace(interval_s=0.5)
    burst.learn(100.0, 1)
    burst.learn(160.0, 1)  # a minute of silence: one interval's worth
    assert burst.quiet_s() <= QUIET_GAPS * 0.5 / 8
    for i in range(25):
        burst.learn(160.001 + 0.001 * i, 1)
    assert burst.quiet_s() == IDLE_S


def test_commits_fall_due_on_the_ticks_of_the_interval() -> None:
    """Every partition of a process commits on the same ticks: a change waits until the
    next multiple of the interval, never longer than the interval; 0 commits at once."""
    assert _next_tick(10.2, 0.5) == 10.5
    assert _next_tick(10.5, 0.5) == 11.0
    assert _next_tick(10.49, 0.5) == _next_tick(10.01, 0.5) == 10.5
    assert _next_tick(7.25, 0.0) == 7.25


POINTS = 15


@dataclass(frozen=True)
class Backlog:
    """Single-point messages over a dozen streams of one partition, published while no node
    runs: POINTS a stream, the streams interleaved."""

    settings: Settings
    partition: int
    series: dict[str, FloatArray]

    @classmethod
    async def publish(cls, settings: Settings, nc: Client, *, seed: int) -> "Backlog":
        first = Node(settings)  # creates DL_EVENTS, so the backlog can wait in it
        await first.start()
        await first.shutdown()
        partition = _p("m0")
        streams = [m for m in (f"m{i}" for i in range(300)) if _p(m) == partition][:12]
        assert len(streams) == 12
        rng = np.random.default_rng(seed)
        series = {m: rng.normal(50.0, 2.0, POINTS) for m in streams}
        for i in range(POINTS):
            for m, values in series.items():
                await nc.publish(f"dl.in.acme.{m}", json.dumps([T0 + 60.0 * i, values[i]]).encode())
        await nc.flush()
        return cls(settings, partition, series)

    def applied(self, node: Node) -> bool:
        records = [node.store.read_actor(self.partition, "acme", m) for m in self.series]
        return all(r is not None and r.points == POINTS for r in records)

    def check_scored_as_each_alone(self, node: Node) -> None:
        detector = Detector(self.settings.detector)
        ts = T0 + 60.0 * np.arange(POINTS, dtype=np.float64)
        for m, values in self.series.items():
            reference = StreamActor("acme", m, None)
            reference.apply(detector, ts, values, np.zeros(POINTS, np.int64), np.arange(POINTS))
            assert node.store.read_actor(self.partition, "acme", m) == reference.record


def large_batch(first: float, points: int = 2000) -> bytes:
    """One message of more points than INLINE_BUDGET_US covers: scored on a thread."""
    assert CALL_US + POINT_US * points > INLINE_BUDGET_US
    values = [first] + [1.0] * (points - 1)
    return json.dumps([[T0 + 60.0 * i, v] for i, v in enumerate(values)]).encode()


def _p(metric: str) -> int:
    return partition_of("acme", metric, TEST_PARTITIONS)


def test_a_streams_messages_join_in_order_with_their_sequences_and_point_indexes() -> None:
    now = 1_800_000_000.0
    one = decode_points(b"[1700000000, 1.0]", None, now=now, max_points=10)
    three = decode_points(b"[[1700000001, 2], [1700000002, 3], [1700000003, 4]]", None,
                          now=now, max_points=10)  # fmt: skip
    ts, values, seqs, indexes = _concatenate([(one, 7), (three, 9), (one, 12)])
    assert ts.tolist() == [1.7e9, 1.7e9 + 1, 1.7e9 + 2, 1.7e9 + 3, 1.7e9]
    assert values.tolist() == [1.0, 2.0, 3.0, 4.0, 1.0]
    assert seqs.tolist() == [7, 9, 9, 9, 12] and indexes.tolist() == [0, 0, 1, 2, 0]
    assert seqs.dtype == indexes.dtype == np.int64
    # A single-point message comes as its floats (`single_point`), alone or among batches.
    point = single_point(b"[1700000000, 1.0]", None, now=now)
    assert point is not None and point == (1.7e9, 1.0)
    assert single_point(b"[1700000000000, 1.0]", None, now=now) is None  # decode_points says why
    mixed: list[Slice] = [(point, 7), (three, 9), (point, 12)]
    singles: list[Slice] = [(point, 7), (point, 12)]
    for parts in (mixed, singles):
        got = _concatenate(parts)
        as_batches: list[Slice] = [(one if p is point else p, seq) for p, seq in parts]
        expected = _concatenate(as_batches)
        for array, reference in zip(got, expected, strict=True):
            assert array.tolist() == reference.tolist() and array.dtype == reference.dtype
