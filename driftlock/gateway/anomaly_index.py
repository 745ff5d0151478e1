"""A copy of DL_ANOMALIES in memory, per tenant, kept current by one ordered consumer, so an
anomaly query is a lookup instead of an ephemeral JetStream consumer per request (which cost
nats-server far more CPU than the query itself at a few hundred queries a second).

The copy answers a query only when it holds everything the query could see: every tenant's
anomalies from the stream's start, less what the stream itself expired (max age), until the
tenant passes `PER_TENANT` (its oldest are then dropped and a query reaching back past them
goes to the stream). It also waits to be at least as fresh as the live stream this gateway
has relayed (the republished copies carry their stream sequence), so a client that saw an
anomaly live finds it in the query; a copy that stays behind sends the query to the stream.
"""

import asyncio
import bisect
import contextlib
import fnmatch
import logging
import time
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from pydantic import ValidationError

from driftlock.bus.subjects import Subjects
from driftlock.gateway.models import AnomalyOut, AnomalyQuery

log = logging.getLogger("driftlock.gateway.anomalies")

PER_TENANT = 20_000
"""Anomalies kept per tenant; older ones are read from the stream."""
TOTAL = 200_000
"""Anomalies kept in all (about 0.5 kB each); past it the largest tenant drops its oldest."""
SCAN_FACTOR = 10
"""A page scans at most this many stored anomalies per requested one, so a selective filter
costs bounded work; the cursor continues where the scan stopped."""
FRESH_WAIT_S = 0.25
"""How long a query waits for the copy to catch up with the live stream."""
_json = msgspec.json.Encoder()


@dataclass(slots=True)
class _Entry:
    seq: int
    stored: float
    """Unix seconds JetStream stored it."""
    metric: str
    score: float
    kind: str
    doc: msgspec.Raw
    """The JSON a page shows, encoded once."""


@dataclass(slots=True)
class _Tenant:
    entries: list[_Entry] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    stored: list[float] = field(default_factory=list)
    dropped_seq: int = 0
    """Highest sequence dropped for the cap (0: none): the copy is complete above it."""
    dropped_stored: float = 0.0

    def append(self, e: _Entry) -> None:
        self.entries.append(e)
        self.seqs.append(e.seq)
        self.stored.append(e.stored)

    def drop_first(self, n: int, *, capped: bool) -> int:
        if capped:
            self.dropped_seq, self.dropped_stored = self.seqs[n - 1], self.stored[n - 1]
        del self.entries[:n], self.seqs[:n], self.stored[:n]
        return n


class AnomalyIndex:
    def __init__(
        self, nc: Client, js: JetStreamContext, subjects: Subjects, max_age_s: float
    ) -> None:
        self._nc, self._js, self._subjects, self._max_age = nc, js, subjects, max_age_s
        self._tenants: dict[str, _Tenant] = {}
        self._total = 0
        self._ready = False
        self._indexed_seq = 0
        self._live_seq = 0
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._live: Subscription | None = None
        self._next_expiry = 0.0

    async def start(self) -> None:
        self._live = await self._nc.subscribe(
            f"{self._subjects.prefix}.anomaly.>", cb=self._on_live
        )
        self._task = asyncio.create_task(self._follow_forever(), name="anomaly-index")

    async def restart(self) -> None:
        """Load the stream again (after a reconnect: the copy may have missed anything)."""
        await self.stop()
        await self.start()

    async def stop(self) -> None:
        self._ready = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        live, self._live = self._live, None
        if live is not None:
            with contextlib.suppress(Exception):
                await live.unsubscribe()

    async def query(
        self, tenant: str, q: AnomalyQuery
    ) -> tuple[list[msgspec.Raw], int | None] | None:
        """The page (each anomaly as its JSON), or None when the copy cannot answer for sure
        (the caller reads the stream)."""
        if not self._ready:
            return None
        if self._indexed_seq < self._live_seq and not await self._catch_up():
            return None
        self._expire()
        t = self._tenants.get(tenant)
        if t is None:
            return [], None
        if q.cursor is not None:
            if q.cursor <= t.dropped_seq:
                return None
            i = bisect.bisect_left(t.seqs, q.cursor)
        elif q.since is not None:
            if t.dropped_seq and q.since <= t.dropped_stored:
                return None
            i = bisect.bisect_left(t.stored, q.since)
        else:
            if t.dropped_seq:
                return None
            i = 0
        return _scan(t.entries, i, q)

    async def _catch_up(self) -> bool:
        deadline = time.monotonic() + FRESH_WAIT_S
        while self._indexed_seq < self._live_seq:
            self._advanced.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._advanced.wait(), left)
            except TimeoutError:
                return False
        return True

    async def _on_live(self, msg: Msg) -> None:
        seq = (msg.headers or {}).get("Nats-Sequence")
        if seq is not None and seq.isdigit():
            self._live_seq = max(self._live_seq, int(seq))

    async def _follow_forever(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("anomaly index not following; retrying", extra={"error": repr(exc)})
            self._ready = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _follow(self) -> None:
        self._tenants, self._indexed_seq, self._total = {}, 0, 0
        stream = self._subjects.anomalies_stream
        info = await self._js.stream_info(stream)
        target, empty = info.state.last_seq, info.state.messages == 0
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            queue.put_nowait(msg)

        sub = await self._js.subscribe(
            self._subjects.anomaly_store_all,
            stream=stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            cb=on_msg,
        )
        try:
            if empty:
                self._ready = True
            while True:
                msg = await queue.get()
                meta = msg.metadata
                self._add(meta.sequence.stream, meta.timestamp.timestamp(), msg.data)
                if not self._ready and (meta.num_pending == 0 or meta.sequence.stream >= target):
                    self._ready = True
                    log.info("anomaly index loaded", extra={"anomalies": self.size})
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    @property
    def ready(self) -> bool:
        """Loaded and following: queries are answered from the copy."""
        return self._ready

    @property
    def size(self) -> int:
        return self._total

    def _add(self, seq: int, stored: float, data: bytes) -> None:
        if seq <= self._indexed_seq:
            return  # redelivered after the ordered consumer was reset
        self._indexed_seq = seq
        self._advanced.set()
        try:
            out = AnomalyOut.model_validate_json(data)
        except ValidationError as exc:
            extra = {"seq": seq, "error": str(exc)}
            log.warning("skipping an anomaly the API cannot show", extra=extra)
            return
        t = self._tenants.setdefault(out.tenant, _Tenant())
        doc = msgspec.Raw(_json.encode(out.model_dump(mode="json", by_alias=True)))
        t.append(_Entry(seq, stored, out.metric, out.score, out.kind.value, doc))
        self._total += 1
        if len(t.entries) > PER_TENANT:
            self._total -= t.drop_first(len(t.entries) - PER_TENANT + PER_TENANT // 10, capped=True)
        if self._total > TOTAL:
            largest = max(self._tenants.values(), key=lambda t: len(t.entries))
            self._total -= largest.drop_first(max(1, len(largest.entries) // 10), capped=True)

    def _expire(self) -> None:
        """Drop what the stream's max age has removed there too."""
        now = time.time()
        if now < self._next_expiry:
            return
        self._next_expiry = now + 1.0
        horizon = now - self._max_age
        for t in self._tenants.values():
            n = bisect.bisect_left(t.stored, horizon)
            if n:
                self._total -= t.drop_first(n, capped=False)


def _scan(entries: list[_Entry], i: int, q: AnomalyQuery) -> tuple[list[msgspec.Raw], int | None]:
    """What a consumer reading from position i would return: the scan budget counts the
    anomalies of the metric filter, `until` ends the page, the cursor follows the last one
    scanned when more are left."""
    budget = q.limit * SCAN_FACTOR
    kind = q.kind.value if q.kind else None
    found: list[msgspec.Raw] = []
    last_seq = scanned = 0
    n = len(entries)
    while i < n and scanned < budget:
        e = entries[i]
        i += 1
        if q.metric is not None and e.metric != q.metric:
            continue
        scanned += 1
        last_seq = e.seq
        if q.until is not None and e.stored > q.until:
            return found, None
        if (
            (q.metric_pattern is None or fnmatch.fnmatchcase(e.metric, q.metric_pattern))
            and e.score >= q.min_score
            and (kind is None or e.kind == kind)
        ):
            found.append(e.doc)
            if len(found) == q.limit:
                break
    pending = i < n if q.metric is None else any(e.metric == q.metric for e in entries[i:])
    return found, (last_seq + 1 if pending and last_seq else None)
