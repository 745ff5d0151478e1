"""A partition worker: restores its partition, pulls batches from `last_applied_seq + 1`,
hands each actor its slice, publishes anomalies and rejects, then commits every state change
with the new `last_applied_seq` in one LMDB transaction.

Anomalies are published (and acknowledged by JetStream) before the commit. A crash in
between replays the batches since the last commit; detection is deterministic, so the replay
makes the same anomaly ids and DL_ANOMALIES drops the copies; it republishes to subscribers
only what it stored.

A batch's streams are scored together with the batches other partitions hand over at the
same time, on the event loop or on the node's detection threads (`scoring.py`).

Commits gather batches: the worker commits what it applied once it has caught up with the
stream and the stream went quiet (`Pace`), or at the first tick of the process's clock
every `commit_interval_s` after the first uncommitted batch (`_next_tick`), or when a
piece's worth of streams is waiting, or as it stops. A stream that appears in several
batches meanwhile is written once: a state is ~26 kB whatever a batch added to it, and a
commit per batch wrote 0.27 states per event while a node drained single-point messages over
1,000 streams, against 0.06 gathered (node CPU ~10% lower). Until their commit the actors
stay in memory (`_unsettled`); a crash replays what was not committed.

Commits are pipelined: the worker hands a commit's states to the store's writer thread and
goes on with the next batch while the fsync runs. Waiting for it instead put a whole fsync in
front of every batch: under load, when the file system's journal makes an fsync cost
hundreds of milliseconds, that was most of an anomaly's latency. What the worker may have in
flight is bounded in bytes (`MAX_BYTES_IN_FLIGHT`), and it keeps every actor of an unfinished
commit (`_unsettled`), so an actor that left memory meanwhile comes back from there, never
from an LMDB copy that is behind it.
"""

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

from driftlock.actors.actor import StreamActor
from driftlock.actors.detection import DetectionThreads
from driftlock.actors.metrics import NodeMetrics, WorkerStatistics
from driftlock.actors.residency import ActiveActors
from driftlock.actors.scoring import Scoring, Slice
from driftlock.bus.feed import Delivery, PartitionFeed
from driftlock.bus.partition import partition_of
from driftlock.bus.publish import publish_all
from driftlock.bus.subjects import PROBE_TENANT, Subjects
from driftlock.ids import METRIC_RULE, TENANT_RULE, is_valid_metric, is_valid_tenant
from driftlock.state.records import ActorRecord
from driftlock.state.store import StateStore, actor_key
from driftlock.tracing import TRACEPARENT, tracer
from driftlock.wire.messages import Anomaly, Reject, RejectReason, json_encoder
from driftlock.wire.payload import decode_points, single_point

log = logging.getLogger("driftlock.partition")

StreamKey = tuple[str, str]


MAX_BYTES_IN_FLIGHT = 8 << 20
"""Encoded states a worker may have handed to the store and not yet seen committed: small
batches (a paced load) never wait for an fsync, a backlog's big ones overlap about one."""
IDLE_S = 0.05
"""The shortest silence that makes a partition quiet: once it has caught up with a backlog,
what it applied is durable (and counted) 50 ms after the last message, not at the next
tick."""
QUIET_GAPS = 10
"""A partition is quiet when no message came for this many times the usual gap between its
messages (and at least `IDLE_S`). A fixed silence would not do: under a steady paced load a
partition's messages come every ~16 ms (4,000 messages/s over 64 partitions), a pause of
50 ms came 2.7 times a second, and each such commit wrote its streams' states again (at
400,000 events/s on a node of two processes, its LMDB writer took 25-31 µs of CPU a message
and the system 33-46 µs, against 17-18 and 29-30 with this rule). The gaps are the
stream's (the messages' stored times), not the worker's waits, which shrink to nothing when
the node is busy, however rarely messages come."""
ACK_TIMEOUT_S = 10.0
"""How long a batch's anomalies may wait for their acks (and for free pending-ack slots)."""


class OwnershipLost(Exception):
    """The partition's lease is no longer ours: stop before publishing or committing more."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    partitions: int
    pull_batch: int
    max_points_per_message: int
    max_batch_streams: int
    """Distinct streams per commit: a pulled batch is applied and committed in pieces of at
    most this many, because the actors of a piece stay in memory until it commits, whatever
    the limit on active actors."""
    commit_interval_s: float = 0.0
    """How long applied changes may gather before they are committed (the ticks of
    `_next_tick`); 0: every piece."""


@dataclass(slots=True)
class _Uncommitted:
    """What the worker applied since its last commit, to commit and count together."""

    since: float
    """When the first of it was applied (monotonic)."""
    actors: dict[StreamKey, StreamActor]
    last_seq: int = 0
    messages: int = 0
    points: int = 0
    anomalies: list[Anomaly] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


@dataclass(slots=True)
class _InFlight:
    """A batch handed to the store: what it changed, and what to count once it is durable."""

    done: "asyncio.Future[None]"
    number: int
    size: int
    applied: _Uncommitted


@dataclass(slots=True)
class Pace:
    """How often a partition's messages come, to tell when it went quiet (see QUIET_GAPS):
    the gap between its messages as they were stored, averaged over the last ~10 batches.
    A gap counts at most a commit interval: a longer silence says nothing more (the commit
    comes on the tick anyway), and after one the pace of the next burst is learnt in a few
    batches, so the burst is durable soon after it ends."""

    interval_s: float
    usual_gap_s: float = 0.0
    last_stored_at: float | None = None

    def learn(self, last_stored_at: float, messages: int) -> None:
        """A batch of `messages`, the last of them stored at `last_stored_at` (seconds)."""
        if self.last_stored_at is not None:
            gap = max(0.0, last_stored_at - self.last_stored_at) / messages
            self.usual_gap_s += (min(gap, self.interval_s) - self.usual_gap_s) / 8
        self.last_stored_at = last_stored_at

    def quiet_s(self) -> float:
        """The silence after which the partition is quiet."""
        return max(IDLE_S, QUIET_GAPS * self.usual_gap_s)


class PartitionWorker:
    def __init__(
        self,
        partition: int,
        *,
        nc: Client,
        js: JetStreamContext,
        store: StateStore,
        subjects: Subjects,
        metrics: NodeMetrics,
        config: WorkerConfig,
        actors: ActiveActors,
        threads: DetectionThreads,
        scoring: Scoring,
        owns: Callable[[int], bool] = lambda partition: True,
    ) -> None:
        self.partition = partition
        self._owns = owns
        self._threads, self._scoring = threads, scoring
        self._nc, self._js, self._store = nc, js, store
        self._subjects, self._metrics = subjects, metrics
        self._tracer = tracer("driftlock.node")
        self._config = config
        self._actors = actors
        self._owner = actors.owner()  # this instance's actors only, never a predecessor's
        self._stopping = asyncio.Event()
        self._feed: PartitionFeed | None = None
        self.last_applied_seq = 0
        """Committed: what a restart or the next owner resumes after."""
        self._applied_seq = 0
        """Applied to the actors in memory, committed or not."""
        self._in_flight: deque[_InFlight] = deque()
        self._bytes_in_flight = 0
        self._commits = 0
        self._uncommitted: _Uncommitted | None = None
        self._pace = Pace(config.commit_interval_s)
        self._unsettled: dict[StreamKey, tuple[StreamActor, int]] = {}
        """Actors of uncommitted and unfinished commits, with the number of the last commit
        holding them."""
        self._failed: BaseException | None = None
        self._checked: dict[str, tuple[RejectReason, str] | None] = {}
        """Subjects already checked, with what is wrong with them (None: nothing), so that a
        stream's messages are checked once (up to `CHECKED_SUBJECTS`)."""

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(
            partition=self.partition,
            last_applied_seq=self.last_applied_seq,
            lag=self._feed.pending if self._feed else 0,
            active_actors=self._actors.active(self._owner),
        )

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Finish the piece of a batch in hand, commit it, then return from run()."""
        self._stopping.set()
        if self._feed is not None:
            self._feed.wake()

    async def run(self) -> None:
        self.last_applied_seq = self._store.read_meta(self.partition).last_applied_seq
        self._applied_seq = self.last_applied_seq
        self._feed = PartitionFeed(
            self._nc,
            self._js,
            stream=self._subjects.events_stream,
            filter_subject=self._subjects.partition_filter(self.partition),
            pull_batch=self._config.pull_batch,
        )
        await self._feed.start(self.last_applied_seq + 1)
        try:
            while not self._stopping.is_set():
                batch = await self._feed.next_batch(self._config.pull_batch, self._wait_s())
                if batch:
                    self._pace.learn(batch[-1].stored_at, len(batch))
                for piece in _pieces(batch, self._config.max_batch_streams):
                    await self._process(piece)
                    if self._stopping.is_set():
                        break  # the rest is not applied: the next run pulls it again
                    await self._commit_if_due(idle=False)
                await self._commit_if_due(idle=not batch and self._feed.pending == 0)
                # Any worker's actors may leave, even mid-batch: residency.py says why
                # that is safe.
                self._actors.passivate_idle()
            await self._commit()  # a handoff's snapshot must contain what was applied
        finally:
            # Submitted while the partition was ours: a handoff's snapshot must contain them.
            await asyncio.gather(
                *(asyncio.shield(c.done) for c in self._in_flight), return_exceptions=True
            )
            self._actors.drop(self._owner)
            await self._feed.stop()

    async def _process(self, batch: list[Delivery]) -> None:
        if self._failed is not None:
            raise self._failed
        started = time.perf_counter()
        slices, rejects, last_seq = self._decode(batch)
        if last_seq == self._applied_seq:
            return
        if self._would_hold_too_many(slices):
            await self._commit()
        touched = await self._actors_of(list(slices))
        anomalies, points = await self._scoring.score(
            list(zip(touched.values(), slices.values(), strict=True))
        )
        self._check_ownership()
        await self._publish_anomalies(anomalies, _trace_origins(batch) if anomalies else {})
        await self._publish_rejects(rejects)
        self._check_ownership()
        self._applied_seq = last_seq
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        applied = self._uncommitted or _Uncommitted(since=time.monotonic(), actors={})
        self._uncommitted = applied
        applied.actors.update(touched)
        applied.last_seq = last_seq
        applied.messages += len(batch)
        applied.points += points
        applied.anomalies += anomalies
        applied.rejects += rejects
        for key, actor in touched.items():
            self._unsettled[key] = (actor, self._commits + 1)

    def _would_hold_too_many(self, slices: dict[StreamKey, list[Slice]]) -> bool:
        """Whether applying these streams would keep more than a piece's worth of actors
        waiting for a commit (they stay in memory until it lands)."""
        waiting = self._uncommitted.actors if self._uncommitted else {}
        new = sum(1 for key in slices if key not in waiting)
        return bool(waiting) and len(waiting) + new > self._config.max_batch_streams

    def _until_due_s(self) -> float | None:
        """Seconds until what was applied must be committed (negative: overdue); None:
        nothing waits."""
        if self._uncommitted is None:
            return None
        due = _next_tick(self._uncommitted.since, self._config.commit_interval_s)
        return due - time.monotonic()

    def _wait_s(self) -> float:
        """How long the next pull may wait for messages before a commit is due."""
        until_due = self._until_due_s()
        return 1.0 if until_due is None else max(0.0, min(self._pace.quiet_s(), until_due))

    async def _commit_if_due(self, *, idle: bool) -> None:
        """Commit when no message came for a while, or when changes waited long enough."""
        until_due = self._until_due_s()
        if until_due is not None and (idle or until_due <= 0.0):
            await self._commit()

    async def _commit(self) -> None:
        """Hand what was applied since the last commit to the store, with the new
        `last_applied_seq`; wait only while too many bytes are in flight."""
        applied, self._uncommitted = self._uncommitted, None
        if applied is None:
            return
        self._check_ownership()
        # Only the actors applied since the last commit changed: the commit costs what they
        # are, however many actors are active.
        records = {
            actor_key(self.partition, a.tenant, a.metric): a.encoded()
            for a in applied.actors.values()
        }
        self._commits += 1
        pending = _InFlight(
            done=self._store.submit(self.partition, records, applied.last_seq),
            number=self._commits,
            size=sum(map(len, records.values())),
            applied=applied,
        )
        self._in_flight.append(pending)
        self._bytes_in_flight += pending.size
        pending.done.add_done_callback(lambda _: self._settle())
        while self._bytes_in_flight > MAX_BYTES_IN_FLIGHT and self._in_flight:
            await asyncio.shield(self._in_flight[0].done)
            self._settle()  # its own callback may not have run yet
        if self._failed is not None:
            raise self._failed

    def _settle(self) -> None:
        """Account for the commits that are durable, oldest first (the writer keeps order)."""
        while self._in_flight and self._in_flight[0].done.done():
            pending = self._in_flight.popleft()
            self._bytes_in_flight -= pending.size
            for key in pending.applied.actors:
                held = self._unsettled.get(key)
                if held is not None and held[1] == pending.number:
                    del self._unsettled[key]
            failure = (
                asyncio.CancelledError() if pending.done.cancelled() else pending.done.exception()
            )
            if failure is not None:
                # The worker stops at its next step and restarts from what is committed.
                self._failed = self._failed or failure
                continue
            self.last_applied_seq = pending.applied.last_seq
            self._count(pending)

    def _check_ownership(self) -> None:
        if not self._owns(self.partition):
            # Nothing of this batch is committed: the next owner replays it.
            raise OwnershipLost(f"partition {self.partition}")

    def _decode(
        self, batch: list[Delivery]
    ) -> tuple[dict[StreamKey, list[Slice]], list[Reject], int]:
        slices: dict[StreamKey, list[Slice]] = {}
        rejects: list[Reject] = []
        last_seq = self._applied_seq
        for d in batch:
            if d.seq <= last_seq:  # already applied: a replayed or re-delivered message
                continue
            last_seq = d.seq
            tokens = d.subject.split(".")
            tenant = tokens[3] if len(tokens) > 3 else "_"
            metric = tokens[4] if len(tokens) > 4 else ""
            if tenant == PROBE_TENANT:
                continue
            problem = self._check_ids(d.subject, tokens)
            if problem is not None:
                rejects.append(_reject(d, tenant, metric, problem[0], problem[1]))
                continue
            content_type = _content_type(d.headers)
            point = single_point(d.data, content_type, now=d.stored_at)
            if point is not None:
                slices.setdefault((tenant, metric), []).append((point, d.seq))
                continue
            decoded = decode_points(
                d.data,
                content_type,
                now=d.stored_at,
                max_points=self._config.max_points_per_message,
            )
            for error in decoded.errors:
                rejects.append(_reject(d, tenant, metric, error.reason, error.detail, error.index))
            if len(decoded.values):
                slices.setdefault((tenant, metric), []).append((decoded, d.seq))
        return slices, rejects, last_seq

    def _check_ids(self, subject: str, tokens: list[str]) -> tuple[RejectReason, str] | None:
        if subject in self._checked:
            return self._checked[subject]
        problem = self._problem_of(subject, tokens)
        if len(self._checked) >= CHECKED_SUBJECTS:
            self._checked.clear()
        self._checked[subject] = problem
        return problem

    def _problem_of(self, subject: str, tokens: list[str]) -> tuple[RejectReason, str] | None:
        if len(tokens) != 5:
            return (
                RejectReason.INVALID_SUBJECT,
                f"{subject}: expected {self._subjects.prefix}.in.<tenant>.<metric>",
            )
        tenant, metric = tokens[3], tokens[4]
        if not is_valid_tenant(tenant):
            return RejectReason.INVALID_TENANT, f"{tenant!r}: {TENANT_RULE}"
        if not is_valid_metric(metric):
            return RejectReason.INVALID_METRIC, f"{metric!r}: {METRIC_RULE}"
        if partition_of(tenant, metric, self._config.partitions) != self.partition:
            # Published straight to a partition subject: accepting it would split the stream
            # across two workers.
            return (
                RejectReason.INVALID_SUBJECT,
                f"{subject}: publish to {self._subjects.ingest(tenant, metric)}",
            )
        return None

    async def _actors_of(self, keys: list[StreamKey]) -> dict[StreamKey, StreamActor]:
        """The streams' actors: from memory, else from LMDB (all of a piece's in one read;
        each restored one counts the read's time shared out), else new."""
        found = {key: self._in_memory(*key) for key in keys}
        missing = [key for key, actor in found.items() if actor is None]
        loaded = dict(zip(missing, await self._loaded(missing), strict=True))
        return {key: loaded[key] if actor is None else actor for key, actor in found.items()}

    async def _loaded(self, keys: list[StreamKey]) -> list[StreamActor]:
        """Actors for streams not in memory, from their records if stored. The read runs on a
        detection thread: py-lmdb lets the GIL go for every key it looks up, and getting it
        back from a thread that holds it may wait up to the switch interval (150-500 µs a
        key against a thread busy in Python, ad hoc). That wait is better the thread's than
        the event loop's, which serves every partition of the process."""
        if not keys:
            return []
        read = partial(_timed_read, self._store, self.partition, keys)
        records, seconds = await self._threads.run(read)
        each_s = seconds / len(keys)
        actors = []
        for (tenant, metric), record in zip(keys, records, strict=True):
            actor = StreamActor(tenant, metric, record)
            self._actors.add(self._owner, actor, restored_in=None if record is None else each_s)
            actors.append(actor)
        return actors

    def _in_memory(self, tenant: str, metric: str) -> StreamActor | None:
        actor = self._actors.get(self._owner, tenant, metric)
        if actor is None and (tenant, metric) in self._unsettled:
            # It left memory before its last commit landed: LMDB is behind it.
            actor = self._unsettled[(tenant, metric)][0]
            self._actors.readmit(self._owner, actor)
        return actor

    async def _publish_anomalies(
        self, anomalies: list[Anomaly], origins: dict[int, dict[str, str]]
    ) -> None:
        """Publish until JetStream has acknowledged every anomaly (ids make retries safe).

        Each anomaly gets a span, a child of the trace its source message carried (a gateway
        request injects one), and passes that span's context on in its headers: the alerter
        and the webhooks it calls continue the same trace."""
        spans = [self._anomaly_span(a, origins.get(a.seq)) for a in anomalies]
        headers = [_headers(a, span) for a, span in zip(anomalies, spans, strict=True)]
        delay = 0.1
        try:
            while anomalies:
                try:
                    subject = self._subjects.anomaly_store
                    messages = (
                        (subject(a.tenant, a.metric), json_encoder.encode(a), h)
                        for a, h in zip(anomalies, headers, strict=True)
                    )
                    await publish_all(self._nc, messages, timeout=ACK_TIMEOUT_S)
                    return
                except Exception as exc:
                    if self._stopping.is_set():
                        raise
                    log.warning(
                        "anomaly publish failed; retrying",
                        extra={
                            "partition": self.partition,
                            "error": repr(exc),
                            "count": len(anomalies),
                        },
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            for span in spans:
                span.end()

    def _anomaly_span(self, a: Anomaly, origin: dict[str, str] | None) -> Span:
        return self._tracer.start_span(
            "anomaly detected",
            context=propagate.extract(origin) if origin else None,
            kind=SpanKind.PRODUCER,
            attributes={
                "driftlock.tenant": a.tenant,
                "driftlock.metric": a.metric,
                "driftlock.anomaly.id": a.id,
                "driftlock.anomaly.kind": str(a.kind),
                "driftlock.anomaly.score": a.score,
                "driftlock.partition": self.partition,
                "messaging.message.id": a.id,
            },
        )

    async def _publish_rejects(self, rejects: list[Reject]) -> None:
        for r in rejects:
            await self._nc.publish(self._subjects.rejected(r.tenant), json_encoder.encode(r))

    def _count(self, done: _InFlight) -> None:
        m, applied = self._metrics, done.applied
        m.messages.inc(applied.messages)
        m.events_applied.inc(applied.points)
        m.states_written.inc(len(applied.actors))
        m.state_bytes_written.inc(done.size)
        for a in applied.anomalies:
            m.anomalies.labels(a.kind.value).inc()
        for r in applied.rejects:
            m.rejects.labels(r.reason.value).inc()


def _timed_read(
    store: StateStore, partition: int, keys: list[StreamKey]
) -> tuple[list[ActorRecord | None], float]:
    started = time.perf_counter()
    return store.read_actors(partition, keys), time.perf_counter() - started


CHECKED_SUBJECTS = 1024
"""Subjects a worker remembers as checked: checking one (two patterns and the partition's
hash, in Python) took ~4% of a node process's time draining single-point messages over
1,000 streams; a worker of 64 holds ~16 of those. At most ~10 MB over 64 workers."""


def _next_tick(since: float, interval: float) -> float:
    """The first multiple of `interval` after `since` (monotonic; `since` itself for 0).

    Every partition of a process commits on the same ticks, not `interval` after its own
    first change: their commits then come in one turn of the event loop, and the store's
    writer makes them one transaction and one fsync, not one each (under the paced load of
    QUIET_GAPS: 256-263 transactions in 17 s against 963-964, the writer's CPU 11-12 µs a
    message against 17-18, the system's 24-27 against 29-30). The price is that turn: each
    commit encodes its states there, a few µs a state. A change still waits at most
    `interval`."""
    if interval <= 0:
        return since
    return (math.floor(since / interval) + 1) * interval


def _pieces(batch: list[Delivery], max_streams: int) -> Iterator[list[Delivery]]:
    """The batch in order, cut before the message of stream max_streams + 1 of a piece."""
    if len(batch) <= max_streams:
        if batch:
            yield batch
        return
    seen: set[str] = set()
    start = 0
    for i, d in enumerate(batch):
        if d.subject not in seen:
            if len(seen) == max_streams:
                yield batch[start:i]
                start, seen = i, set()
            seen.add(d.subject)
    yield batch[start:]


def _reject(
    d: Delivery,
    tenant: str,
    metric: str,
    reason: RejectReason,
    detail: str,
    index: int | None = None,
) -> Reject:
    return Reject(
        tenant=tenant,
        metric=metric,
        subject=_producer_subject(d.subject),
        reason=reason,
        detail=detail,
        seq=d.seq,
        index=index,
        rejected_at=time.time(),
    )


def _producer_subject(partition_subject: str) -> str:
    """`<prefix>.p.<n>.<tenant>.<metric>` back to the `<prefix>.in.<tenant>.<metric>` the
    producer published to."""
    prefix, _, _, rest = partition_subject.split(".", 3)
    return f"{prefix}.in.{rest}"


def _trace_origins(batch: list[Delivery]) -> dict[int, dict[str, str]]:
    """The trace context of each message that carried one, by stream sequence (an anomaly
    names its source message by that sequence)."""
    return {d.seq: d.headers for d in batch if d.headers and TRACEPARENT in d.headers}


def _headers(a: Anomaly, span: Span) -> dict[str, str]:
    headers = {"Nats-Msg-Id": a.id}
    propagate.inject(headers, context=trace.set_span_in_context(span))
    return headers


def _content_type(headers: dict[str, str] | None) -> str | None:
    if not headers:
        return None
    found = headers.get("Content-Type")
    if found is None:
        found = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    return found
