"""The pieces of a process's partitions, scored together in one detector call."""

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from driftlock.actors.actor import StreamActor
from driftlock.actors.detection import DetectionThreads
from driftlock.actors.scoring import Scoring, Work, points_of, scoring_cost_us
from driftlock.detect import Detector
from driftlock.wire.messages import Anomaly
from driftlock.wire.payload import DecodedPoints

T0 = 1_700_000_000.0


@pytest.fixture
def threads() -> Iterator[DetectionThreads]:
    pool = DetectionThreads(1)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector()  # warms up with calls of its own: made before any spy


@pytest.fixture
def calls(detector: Detector, monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[float], str]]:
    """Each detector call: the first value of each of its streams, and the thread it ran
    on. (A spy: every call goes on to the real detector.)"""
    seen: list[tuple[list[float], str]] = []
    detect_joined = Detector.detect_joined

    def noted(self: Detector, states: Any, values: Any, times: Any, lengths: Any, *a: Any) -> Any:
        starts = np.cumsum([0, *lengths[:-1]])
        seen.append(([float(values[i]) for i in starts], threading.current_thread().name))
        return detect_joined(self, states, values, times, lengths, *a)

    monkeypatch.setattr(Detector, "detect_joined", noted)
    return seen


def piece(first: float, *metrics: str, points: int = 100, seq: int = 1) -> Work:
    """A piece of one message a stream, the streams' values starting at first, first + 1…"""
    rng = np.random.default_rng(int(first))
    work: Work = []
    for k, metric in enumerate(metrics):
        values = np.concatenate([[first + k], rng.normal(10.0, 1.0, points - 1)])
        values[-1] = 500.0  # one anomaly a stream, once the detector has seen enough
        ts = T0 + 60.0 * np.arange(points, dtype=np.float64)
        decoded = DecodedPoints(ts, values, np.arange(points, dtype=np.int32), [])
        work.append((StreamActor("acme", metric, None), [(decoded, seq)]))
    return work


def cost_us(work: Work) -> float:
    return scoring_cost_us([points_of(parts) for _, parts in work])


def scored_alone(detector: Detector, work: Work) -> list[tuple[StreamActor, list[Anomaly]]]:
    """Each stream of the piece applied on its own, the way `StreamActor.apply` does: its
    actor and its anomalies."""
    alone = []
    for actor, [(decoded, seq)] in work:
        assert isinstance(decoded, DecodedPoints)
        reference = StreamActor(actor.tenant, actor.metric, None)
        seqs = np.full(len(decoded.values), seq, np.int64)
        indexes = decoded.index.astype(np.int64)
        found = reference.apply(detector, decoded.ts, decoded.values, seqs, indexes)
        alone.append((reference, found))
    return alone


async def test_pieces_waiting_together_are_scored_in_one_call_as_each_alone(
    detector: Detector, threads: DetectionThreads, calls: list[tuple[list[float], str]]
) -> None:
    scoring = Scoring(detector, threads, inline_budget_us=1e6)
    a, b = piece(1.0, "a1", "a2"), piece(3.0, "b1")
    # Handed over in one turn of the loop, as partitions woken by one read from NATS are.
    (found_a, points_a), (found_b, points_b) = await asyncio.gather(
        scoring.score(a), scoring.score(b)
    )
    assert [first for first, _ in calls] == [[1.0, 2.0, 3.0]]
    assert (points_a, points_b) == (200, 100)
    alone = scored_alone(detector, a + b)
    for (actor, _), (reference, _) in zip(a + b, alone, strict=True):
        assert actor.record == reference.record
    expected = [sorted(x.id for _, found in part for x in found) for part in (alone[:2], alone[2:])]
    assert expected[0] and expected[1]  # the spikes at the end of each stream
    assert [sorted(x.id for x in found_a), sorted(x.id for x in found_b)] == expected


async def test_the_loop_scores_what_its_budget_covers_and_a_thread_the_rest(
    detector: Detector, threads: DetectionThreads, calls: list[tuple[list[float], str]]
) -> None:
    """Pieces within the inline budget are scored on the event loop, as many a call as it
    covers; a piece beyond it alone goes to a detection thread."""
    small, other, large = piece(1.0, "a"), piece(2.0, "b"), piece(3.0, "c", points=400)
    budget = cost_us(small) + 1.0
    assert cost_us(large) > budget
    scoring = Scoring(detector, threads, inline_budget_us=budget)
    await asyncio.gather(scoring.score(small), scoring.score(other), scoring.score(large))
    loop_thread = threading.current_thread().name
    ran = {first[0]: thread for first, thread in calls}
    assert sorted(ran) == [1.0, 2.0, 3.0]  # the two small ones did not fit one call
    assert ran[1.0] == ran[2.0] == loop_thread
    assert ran[3.0].startswith("detect")


async def test_a_piece_that_fails_fails_alone(
    detector: Detector, threads: DetectionThreads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A detector call that raises (injected here for a piece whose first value is 666) is
    made again piece by piece: the others are scored, the failing one gets the error and its
    actors are untouched."""
    detect_joined = Detector.detect_joined

    def failing(self: Detector, states: Any, values: Any, *a: Any) -> Any:
        if 666.0 in values:
            raise ValueError("injected")
        return detect_joined(self, states, values, *a)

    monkeypatch.setattr(Detector, "detect_joined", failing)
    scoring = Scoring(detector, threads, inline_budget_us=1e6)
    good, bad = piece(1.0, "a"), piece(666.0, "b")
    results = await asyncio.gather(scoring.score(good), scoring.score(bad), return_exceptions=True)
    scored, failed = results
    assert isinstance(failed, ValueError) and not isinstance(scored, BaseException)
    [(reference, found)] = scored_alone(detector, good)
    assert [x.id for x in scored[0]] == [x.id for x in found] and found
    assert scored[1] == 100
    assert good[0][0].record == reference.record
    assert bad[0][0].record.points == 0


async def test_pieces_for_the_threads_are_shared_among_them(
    detector: Detector, calls: list[tuple[list[float], str]]
) -> None:
    """Large pieces handed over together keep every detection thread busy: a call each."""
    pool = DetectionThreads(2)
    try:
        scoring = Scoring(detector, pool, inline_budget_us=0.0)
        await asyncio.gather(*(scoring.score(piece(float(k), f"m{k}")) for k in (1, 2, 3, 4)))
    finally:
        pool.shutdown()
    assert sorted(first for firsts, _ in calls for first in firsts) == [1.0, 2.0, 3.0, 4.0]
    assert len(calls) == 2 and all(len(firsts) == 2 for firsts, _ in calls)
