"""Scoring the pieces of a process's partitions together, in one detector call.

Under a paced load a partition's batch is a message or two (64 partitions share the
stream), and a detector call on so little costs more than its share of a call on many
streams: the call's fixed part, and the caches and branch predictors, which the work between
two calls has flushed. In a node of two processes under paced 100-point messages over 1,000
streams, a call on one piece (1.4-2.2 streams) cost 195-263 µs of CPU a stream; scoring
together the pieces that wait when the event loop gets to them (5-10 streams a call) cost
182-230, 8-17% less in seven pairs of runs of eight (250,000-450,000 events/s; one even). The
price: a piece waits for the loop's next turn and for the others' scoring, 2-4 ms more at the
median under that load.

Nothing waits on purpose: the pieces handed over while the loop was busy are scored at its
next turn. (Holding a call back up to 5 ms to gather more made 8 streams a call and saved
~5% more, but added those milliseconds to anomalies at an idle node, whose producer sends a
point at a time: p50 1.6 → 4.7 ms in `bench.pipeline`.)

Scoring is pure until the actors take the results (`StreamActor.absorb`): when the joint call
fails, each piece is scored again alone, so a failure is only its own partition's.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from itertools import accumulate
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from driftlock.actors.actor import StreamActor
from driftlock.actors.detection import DetectionThreads
from driftlock.detect import Detections, Detector, DetectorState
from driftlock.detect.tuning import StreamTuning
from driftlock.wire.messages import Anomaly
from driftlock.wire.payload import DecodedPoints, one_point

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Point = tuple[float, float]
Slice = tuple[DecodedPoints | Point, int]
"""A message's points (a single-point message's as floats: see `single_point`) and its
stream sequence."""
Work: TypeAlias = list[tuple[StreamActor, list[Slice]]]
"""A piece: each of its streams' actor with its slices, in order."""
Scored = tuple[list[Anomaly], int]
"""A piece's anomalies and how many points it applied."""


@dataclass(slots=True, eq=False)
class _Job:
    work: Work
    lengths: list[int]
    """Each stream's points, counted once as the piece is handed over: counting them from
    the slices for every estimate took 3.9% of a paced node's event loop (py-spy)."""
    cost_us: float
    done: "asyncio.Future[Scored]"


class Scoring:
    def __init__(
        self,
        detector: Detector,
        threads: DetectionThreads,
        *,
        inline_budget_us: float,
    ) -> None:
        """`inline_budget_us`: a call estimated at no more than this runs on the event loop,
        keeping the GIL, not on a detection thread (see INLINE_BUDGET_US); 0: never."""
        self._detector, self._threads = detector, threads
        self._inline_budget_us = inline_budget_us
        self._waiting: list[_Job] = []
        self._start_due = False
        self._on_threads: set[asyncio.Task[None]] = set()

    async def score(self, work: Work) -> Scored:
        """Score a piece (with whatever other pieces wait) and let its actors take the
        results. Cancelled, it returns only once they have: what it scores must not change
        under a detection thread."""
        loop = asyncio.get_running_loop()
        lengths = [points_of(parts) for _, parts in work]
        job = _Job(work, lengths, scoring_cost_us(lengths), loop.create_future())
        self._waiting.append(job)
        if not self._start_due:
            self._start_due = True
            loop.call_soon(self._start)
        try:
            return await asyncio.shield(job.done)
        except asyncio.CancelledError:
            await asyncio.wait([job.done])
            raise

    def _start(self) -> None:
        """Score what waits: on the loop as much as the inline budget covers, on a thread
        every piece the budget alone would not cover; the rest at the loop's next turn."""
        loop = asyncio.get_running_loop()
        inline, threaded, later = self._share(self._waiting)
        self._waiting, self._start_due = later, bool(later)
        if later:
            loop.call_soon(self._start)
        for group in _groups(threaded, self._threads.count):
            task = loop.create_task(self._score_on_thread(group))
            self._on_threads.add(task)
            task.add_done_callback(self._on_threads.discard)
        if inline:
            _settle(inline, _score(self._detector, inline))

    def _share(self, jobs: list[_Job]) -> tuple[list[_Job], list[_Job], list[_Job]]:
        """The jobs to score on the loop now, on a thread now, and later."""
        inline: list[_Job] = []
        threaded: list[_Job] = []
        later: list[_Job] = []
        spent = 0.0
        for job in jobs:
            if job.cost_us > self._inline_budget_us:
                threaded.append(job)
            elif spent + job.cost_us <= self._inline_budget_us:
                inline.append(job)
                spent += job.cost_us
            else:
                later.append(job)
        return inline, threaded, later

    async def _score_on_thread(self, jobs: list[_Job]) -> None:
        results = await self._threads.run(partial(_score, self._detector, jobs))
        _settle(jobs, results)


def _groups(jobs: list[_Job], threads: int) -> list[list[_Job]]:
    """The jobs in a call per thread at most, of about equal cost: a backlog's pieces, all
    handed over at once, keep every detection thread busy."""
    groups: list[list[_Job]] = [[] for _ in range(min(threads, len(jobs)))]
    costs = [0.0] * len(groups)
    for job in jobs:
        least = costs.index(min(costs))
        groups[least].append(job)
        costs[least] += job.cost_us
    return groups


def _score(detector: Detector, jobs: list[_Job]) -> "list[Scored | BaseException]":
    """Every job's piece in one detector call, then each job's actors take their results;
    a job whose actors fail to take theirs gets its exception, the others their results."""
    try:
        work = [item for job in jobs for item in job.work]
        detected = _detect(detector, work, [n for job in jobs for n in job.lengths])
    except Exception as exc:
        if len(jobs) == 1:
            return [exc]
        return [result for job in jobs for result in _score(detector, [job])]
    results: list[Scored | BaseException] = []
    first = 0
    for job in jobs:
        try:
            results.append(detected.absorb(first, len(job.work)))
        except Exception as exc:
            results.append(exc)
        first += len(job.work)
    return results


def _settle(jobs: list[_Job], results: "Sequence[Scored | BaseException]") -> None:
    for job, result in zip(jobs, results, strict=True):
        if isinstance(result, BaseException):
            job.done.set_exception(result)
        else:
            job.done.set_result(result)


class _Detected:
    """A detector call's results, for the actors to take, a job's streams at a time."""

    def __init__(
        self,
        work: Work,
        points: tuple[FloatArray, FloatArray, IntArray, IntArray],
        lengths: list[int],
        tunings: list[StreamTuning],
        scored: list[tuple[DetectorState, Detections]],
    ) -> None:
        self._work, self._points = work, points
        self._tunings, self._scored = tunings, scored
        self._starts = list(accumulate(lengths, initial=0))

    def absorb(self, first: int, streams: int) -> Scored:
        """Streams first to first + streams take their results: their anomalies, and how
        many points they applied."""
        ts, values, seqs, indexes = self._points
        anomalies: list[Anomaly] = []
        for k in range(first, first + streams):
            state, found = self._scored[k]
            at = slice(self._starts[k], self._starts[k + 1])
            anomalies += self._work[k][0].absorb(
                self._tunings[k], ts[at], values[at], seqs[at], indexes[at], state, found
            )
        return anomalies, self._starts[first + streams] - self._starts[first]


def _detect(detector: Detector, work: Work, lengths: list[int]) -> _Detected:
    """Score the streams in one detector call; the actors are untouched until they take
    their results.

    One call even for one stream: with the state's tables in one buffer, `detect_many` costs
    less than `detect` at any size (warm states, one core, ad hoc: one stream of one point
    141 µs against 193; of 100 points 212 against 207; four streams of one point 326 against
    557, of 100 points 765 against 1,244)."""
    # The points in one set of arrays, each stream a view of them: a set of arrays per
    # stream cost several numpy calls a stream, 1-5 µs each.
    points = _concatenate([part for _, parts in work for part in parts])
    ts, values = points[0], points[1]
    tunings = [detector.tuning_for(actor.tenant, actor.metric) for actor, _ in work]
    states = [actor.record.detector for actor, _ in work]
    sensitivities = [tuning.sensitivity for tuning in tunings]
    scored = detector.detect_joined(states, values, ts, lengths, sensitivities)
    return _Detected(work, points, lengths, tunings, scored)


INLINE_BUDGET_US = 3000.0
"""The most scoring the event loop of a process with one detection thread (a node of one
process per core, `--processes 0`) does itself, blocking everything else meanwhile.

There, a hand-over to the thread and back cost a paced batch of one or two messages ~15 ms
(median) of waiting for the GIL and for the thread's other batches, against under 1 ms of
scoring (two node processes at 200,000 events/s). A process with more threads has cores they
score on beside the loop, which a backlog needs: one process on 2 cores scoring small
batches inline handled 9,376 single-point messages/s against 13,082 on its threads."""
CALL_US, POINT_US = 120.0, 1.5
"""What scoring costs on this project's 2-core reference machine: a detector call has a fixed
cost, then each point adds its own (`python -m bench.detect_cost`; ad hoc timings of one call
on 1, 100 and 1,000 points). A piece scored by `detect_many` costs less (50 µs a stream at
one point): the estimate errs on the side of the threads."""


def scoring_cost_us(lengths: list[int]) -> float:
    """What scoring streams of these many points costs, estimated."""
    return CALL_US * len(lengths) + POINT_US * sum(lengths)


def points_of(parts: list[Slice]) -> int:
    points = 0
    for part, _ in parts:
        points += 1 if isinstance(part, tuple) else len(part.values)
    return points


def _concatenate(parts: list[Slice]) -> tuple[FloatArray, FloatArray, IntArray, IntArray]:
    """The parts' points, in order: timestamps, values, the sequence of the message each
    came in and its index there."""
    points = [p for p, _ in parts if isinstance(p, tuple)]
    if len(points) == len(parts):  # single-point messages only: each array made once
        return (
            np.array([ts for ts, _ in points]),
            np.array([value for _, value in points]),
            np.array([seq for _, seq in parts], dtype=np.int64),
            np.zeros(len(parts), dtype=np.int64),
        )
    first = parts[0][0]
    if len(parts) == 1 and isinstance(first, DecodedPoints):
        seqs = np.full(len(first.values), parts[0][1], dtype=np.int64)
        return first.ts, first.values, seqs, first.index.astype(np.int64)
    # Whole-list numpy calls only (a numpy call per part cost more than the detector's share
    # of a point).
    pieces = [p if isinstance(p, DecodedPoints) else one_point(*p) for p, _ in parts]
    ts = np.concatenate([p.ts for p in pieces])
    values = np.concatenate([p.values for p in pieces])
    seqs = np.repeat(
        np.array([s for _, s in parts], dtype=np.int64), [len(p.values) for p in pieces]
    )
    indexes = np.concatenate([p.index for p in pieces]).astype(np.int64)
    return ts, values, seqs, indexes
