"""Publishing a batch to JetStream and waiting until every message is stored.

Each connection gets one wildcard inbox for the acks, matched to their futures by a counter.
nats-py's `publish_async` works the same way, but per message it also starts a task to wait
for its pending-ack semaphore, draws a random token, and parses each ack with `json` into a
dataclass: about a tenth of the gateway's CPU for a 100-point ingest request.
"""

import asyncio
import itertools
import weakref
from collections.abc import Iterable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from driftlock.errors import DriftLockError

Message = tuple[str, bytes, dict[str, str] | None]
"""(subject, payload, headers)"""
MAX_PENDING = 4000
"""Publishes of a connection waiting for their acks; more wait for room (nats-py's default)."""
NO_RESPONDERS = "503"


class PublishRefused(DriftLockError):
    """JetStream answered a publish with an error, or no stream takes its subject."""


class _AckError(msgspec.Struct):
    code: int = 0
    description: str = ""


class _Ack(msgspec.Struct):
    seq: int = 0
    error: _AckError | None = None


_ack_decoder = msgspec.json.Decoder(_Ack)


class AckInbox:
    """The acks of one connection's JetStream publishes."""

    def __init__(self, nc: Client, max_pending: int = MAX_PENDING) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        self._max = max_pending
        self._pending: dict[str, tuple[asyncio.Future[int], str]] = {}
        """By inbox token: the ack's future and the subject published to."""
        self._tokens = itertools.count()
        self._room = asyncio.Event()
        self._room.set()
        self._subscribed = False
        self._subscribing = asyncio.Lock()

    async def publish_all(self, messages: Iterable[Message], timeout: float) -> None:
        """Publish, then wait for every ack; raise if one does not come in time.

        A batch waits at most `timeout` for room among the pending acks, so one whose acks
        are lost (its server died) fails rather than holding the connection's slots
        forever; on any failure its futures are dropped, which frees their slots."""
        if not self._subscribed:
            await self._subscribe()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        tokens: list[str] = []
        futures: list[asyncio.Future[int]] = []
        try:
            for subject, payload, headers in messages:
                if len(self._pending) >= self._max:
                    await self._wait_for_room(deadline - loop.time())
                token = str(next(self._tokens))
                future = loop.create_future()
                self._pending[token] = (future, subject)
                tokens.append(token)
                futures.append(future)
                await self._nc.publish(
                    subject, payload, reply=self._prefix + token, headers=headers
                )
            await self._wait_for_acks(futures, deadline)
        except BaseException:
            for token in tokens:
                self._pending.pop(token, None)
            for future in futures:
                future.cancel()
            self._made_room()
            raise

    async def _subscribe(self) -> None:
        async with self._subscribing:
            if not self._subscribed:  # nats-py subscribes it again after a reconnect
                await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)
                self._subscribed = True

    async def _wait_for_acks(self, futures: list["asyncio.Future[int]"], deadline: float) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                for future in futures:
                    await future
        except TimeoutError:
            unacked = sum(not f.done() for f in futures)
            raise TimeoutError(
                f"{unacked} of {len(futures)} publishes have waited for their acks too long"
            ) from None

    async def _wait_for_room(self, seconds: float) -> None:
        self._room.clear()
        try:
            await asyncio.wait_for(self._room.wait(), max(seconds, 0.0))
        except TimeoutError:
            raise TimeoutError(
                f"{len(self._pending)} publishes have waited for their acks too long"
            ) from None

    def _made_room(self) -> None:
        if len(self._pending) < self._max:
            self._room.set()

    async def _on_ack(self, msg: Msg) -> None:
        pending = self._pending.pop(msg.subject[len(self._prefix) :], None)
        self._made_room()
        if pending is None or pending[0].done():
            return  # its batch gave up
        future, subject = pending
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            future.set_exception(PublishRefused(f"no stream stores {subject!r}"))
            return
        try:
            ack = _ack_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            future.set_exception(PublishRefused(f"unreadable ack: {exc}"))
            return
        if ack.error is not None:
            refused = PublishRefused(f"JetStream {ack.error.code}: {ack.error.description}")
            future.set_exception(refused)
            return
        future.set_result(ack.seq)


_inboxes: "weakref.WeakKeyDictionary[Client, AckInbox]" = weakref.WeakKeyDictionary()


def ack_inbox(nc: Client) -> AckInbox:
    inbox = _inboxes.get(nc)
    if inbox is None:
        inbox = _inboxes[nc] = AckInbox(nc)
    return inbox


async def publish_all(nc: Client, messages: Iterable[Message], timeout: float) -> None:
    """Publish to JetStream and wait until every message is stored (`AckInbox.publish_all`)."""
    await ack_inbox(nc).publish_all(messages, timeout)
