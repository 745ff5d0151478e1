"""The fast batched pull path of one partition.

nats-py's `fetch()` creates a request and a future per call (~20k msgs/s measured here);
instead the feed keeps pull requests outstanding on a JetStream consumer and receives the
messages on one plain core-NATS subscription, handing the worker everything that arrived
since its last batch. The consumer acks nothing: the worker's `last_applied_seq` in LMDB is
the position, so on any doubt (a gap in delivery, a lost consumer) the feed recreates the
consumer at the next unapplied sequence.

What a partition holds, requested and not yet delivered plus delivered and not yet taken, is
bounded in messages (two pull batches) and in bytes (two `max_bytes`, at the average size of
the messages seen): a backlog stays in the stream, not in the node's memory, and the server
never has more to push at the node than the node is ready to read (nats-server cuts a slow
reader off as a slow consumer).
"""

import asyncio
import contextlib
import logging
import time
import uuid
from typing import NamedTuple

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

log = logging.getLogger("driftlock.feed")

CREATE_TIMEOUTS_S = (1.0, 1.0, 1.0, 2.0, 2.0, 5.0)
MAX_BYTES = 1 << 20
"""Bytes per pull request, at the average message size: 64 partitions hold at most ~128 MB."""
SIZE_HORIZON = 4096
"""Messages over which the average message size is taken (older ones fade by halves)."""

_pull_encoder = msgspec.json.Encoder()


def _consumer_name() -> str:
    return f"dl_{uuid.uuid4().hex[:20]}"


class Delivery(NamedTuple):
    """One stored message: its partition subject, payload, headers, stream sequence, stored
    time (Unix seconds) and how many messages of the partition were still pending."""

    subject: str
    data: bytes
    headers: dict[str, str] | None
    seq: int
    stored_at: float
    pending: int


class PartitionFeed:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        *,
        stream: str,
        filter_subject: str,
        pull_batch: int,
        max_bytes: int = MAX_BYTES,
        expires_s: float = 5.0,
        heartbeat_s: float = 1.0,
    ) -> None:
        self._nc, self._js = nc, js
        self._stream, self._filter = stream, filter_subject
        self._pull_batch, self._expires_s = pull_batch, expires_s
        self._max_bytes = max_bytes
        self._seen_messages, self._seen_bytes = 1, 1024  # a guess until messages arrive
        self._heartbeat_s = heartbeat_s
        self._buffer: list[Delivery] = []
        self._arrived = asyncio.Event()
        self._credit = 0
        """Messages requested and not yet delivered or expired, over all pull requests."""
        self._consumer = ""
        self._sub: Subscription | None = None
        self._next_cseq = 1
        self._next_seq = 1
        self._needs_reset = ""
        self._last_activity = time.monotonic()
        self.pending = 0

    async def start(self, start_seq: int) -> None:
        self._next_seq = start_seq
        await self._open_consumer()

    async def next_batch(self, max_messages: int, wait_s: float = 1.0) -> list[Delivery]:
        """Everything that arrived since the last call (at most max_messages); waits up to
        wait_s for the first message, then returns an empty list."""
        if not self._buffer:
            self._arrived.clear()
            # Not wait_for: on Python 3.11 it runs the wait as a task of its own, one more
            # pass of the event loop before the worker wakes, and under a paced load 4% of
            # the loop's time.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._arrived.wait()
            if not self._buffer and self._stalled():
                self._needs_reset = "no message, heartbeat or status from the pull requests"
        if self._needs_reset:
            await self._reset_or_retry_later()
        batch, self._buffer = self._buffer[:max_messages], self._buffer[max_messages:]
        await self._top_up()
        return batch

    def wake(self) -> None:
        """Ends a waiting next_batch early (used on shutdown)."""
        self._arrived.set()

    async def stop(self) -> None:
        await self._close_consumer()

    # -- consumer lifecycle --

    async def _open_consumer(self) -> None:
        config = ConsumerConfig(
            name=_consumer_name(),  # named by us: see _create
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(self._next_seq, 1),
            filter_subject=self._filter,
            inactive_threshold=60.0,
            max_waiting=16,
            # Its state is worth nothing to us (the position is in LMDB), and a file-backed
            # one had nats-server rewrite 64 state files, a third of its CPU under load.
            mem_storage=True,
        )
        info = await self._create(config)
        assert info.name is not None
        self._consumer = info.name
        self._next_cseq = 1
        self._credit = 0
        self._needs_reset = ""
        self._last_activity = time.monotonic()
        # A fresh inbox per consumer, so stragglers of an old consumer never mix in.
        self._sub = await self._nc.subscribe(self._nc.new_inbox(), cb=self._on_message)
        await self._top_up()

    async def _create(self, config: ConsumerConfig) -> ConsumerInfo:
        """Short timeouts, several tries: on a cluster that lost a server, nats-server (2.9
        and 2.10 here) places about half of new ephemeral consumers on the dead peer, and
        those requests never get an answer, while the others succeed at once.

        The second try keeps the name, so a creation that landed late is found rather than
        left behind (under load, orphans piled up to 1,150 filtered consumers and stalled
        nats-server). Later tries take a fresh name: retrying a name the server placed on a
        dead peer would wait on that peer forever."""
        for attempt, timeout in enumerate(CREATE_TIMEOUTS_S):
            if attempt >= 2:
                config.name = _consumer_name()
            try:
                return await self._js.add_consumer(self._stream, config, timeout=timeout)
            except TimeoutError:
                log.info("consumer creation timed out; retrying", extra={"filter": self._filter})
        assert config.name is not None
        with contextlib.suppress(Exception):  # it may exist without our having heard
            await asyncio.wait_for(self._js.delete_consumer(self._stream, config.name), 1.0)
        raise TimeoutError(f"creating a consumer on {self._filter} timed out {attempt + 1} times")

    async def _close_consumer(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._consumer:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(self._stream, self._consumer)
            self._consumer = ""

    async def _reset_or_retry_later(self) -> None:
        """Recreate the consumer after the last buffered message (buffered ones are complete
        and in order); while NATS is unreachable, try again on a later call."""
        log.info(
            "resetting partition consumer",
            extra={
                "filter": self._filter,
                "from_seq": self._next_seq,
                "reason": self._needs_reset,
                "credit": self._credit,
            },
        )
        await self._close_consumer()
        try:
            await self._open_consumer()
        except Exception as exc:
            log.warning("cannot recreate consumer yet", extra={"error": repr(exc)})
            self._needs_reset = f"recreating failed: {exc!r}"
            self._last_activity = time.monotonic()
            await asyncio.sleep(0.5)

    def _stalled(self) -> bool:
        """Checked only while waiting with nothing buffered: pull requests are outstanding
        then, and expiring ones answer at least every expires_s even on an idle partition."""
        return time.monotonic() - self._last_activity > self._expires_s + 5.0

    # -- pull requests --

    @property
    def held(self) -> int:
        """Messages requested and not yet delivered, plus delivered and not yet taken."""
        return self._credit + len(self._buffer)

    def request_size(self) -> int:
        """Messages per pull request: a pull batch, or fewer when they are large."""
        average = self._seen_bytes / self._seen_messages
        return max(1, min(self._pull_batch, int(self._max_bytes / average)))

    async def _top_up(self) -> None:
        """Keep one to two requests' worth held, so the server never waits for us and a
        backlog stays on the server.

        The server serves its waiting requests round-robin, so the feed keeps one credit for
        all of them: a message takes one, an expired request (408) takes its remainder."""
        if self._sub is None or not self._nc.is_connected:
            return
        size = self.request_size()
        while self.held < size:
            request = {
                "batch": size,
                "expires": int(self._expires_s * 1e9),
                "idle_heartbeat": int(self._heartbeat_s * 1e9),
            }
            await self._nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self._consumer}",
                _pull_encoder.encode(request),
                reply=self._sub.subject,
            )
            self._credit += size
            self._last_activity = time.monotonic()

    async def _on_message(self, msg: Msg) -> None:
        self._last_activity = time.monotonic()
        if not msg.reply:
            self._on_status(msg)
            return
        meta = msg.reply.split(".")
        if len(meta) >= 12:  # $JS.ACK.<domain>.<account>.<stream>.<consumer>.… (v2 format)
            meta = meta[2:]
        seq, cseq = int(meta[5]), int(meta[6])
        if cseq != self._next_cseq:
            self._needs_reset = (
                f"delivery gap: consumer sequence {cseq}, expected {self._next_cseq}"
            )
            self._arrived.set()
            return
        self._next_cseq = cseq + 1
        self._next_seq = seq + 1
        self.pending = int(meta[8])
        self._credit -= 1
        self._seen_messages += 1
        self._seen_bytes += len(msg.data)
        if self._seen_messages > SIZE_HORIZON:
            self._seen_messages //= 2
            self._seen_bytes //= 2
        self._buffer.append(
            Delivery(msg.subject, msg.data, msg.headers, seq, int(meta[7]) / 1e9, self.pending)
        )
        self._arrived.set()

    def _on_status(self, msg: Msg) -> None:
        status = (msg.headers or {}).get("Status", "")
        if status == "100":  # idle heartbeat: says what the consumer last delivered
            last = int((msg.headers or {}).get("Nats-Last-Consumer", "0"))
            if last >= self._next_cseq:
                self._needs_reset = (
                    f"heartbeat: delivered up to {last}, received {self._next_cseq - 1}"
                )
        elif status == "408":  # a request expired: its remainder will not come
            self._credit -= int((msg.headers or {}).get("Nats-Pending-Messages", "0"))
        elif status == "409":
            # Consumer deleted, leadership change, max waiting exceeded…: start over cleanly.
            description = (msg.headers or {}).get("Description", "")
            self._needs_reset = f"status 409 {description}"
        self._arrived.set()
