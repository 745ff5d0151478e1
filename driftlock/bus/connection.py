"""A NATS connection that reconnects forever and whose callbacks log and never raise."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client

log = logging.getLogger("driftlock.bus")


class _Logged:
    """The connection's callbacks: they log with the connection's name (a node has three)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.client: Client | None = None

    async def error(self, exc: Exception) -> None:
        log.warning("nats error", extra={"connection": self.name, "error": repr(exc)})

    async def disconnected(self) -> None:
        if self.client is not None and self.client.is_closed:
            # Closed by us (it reconnects for ever otherwise): every shutdown did this, and
            # a warning for it taught operators to ignore the one that matters.
            log.info("nats connection closed", extra={"connection": self.name})
        else:
            log.warning("nats disconnected", extra={"connection": self.name})

    async def reconnected(self) -> None:
        log.info("nats reconnected", extra={"connection": self.name})


PING_INTERVAL_S = 5.0
MAX_OUTSTANDING_PINGS = 3
"""A connection whose server answered none of 3 PINGs (at most 20 s) is dropped and made
again. nats-py's own default is 2 minutes apart, 2 unanswered: after a server of a cluster
was killed, nats-py's read loop sometimes died (RuntimeError: "read() called while another
coroutine is already waiting") while the connection still counted as connected, and every
request, publish ack and pulled message then went nowhere for minutes. The cause found
(see on_reconnected) is fixed; the pings stay as the guard against any other."""


async def connect(url: str, *, name: str, connect_timeout: float = 5.0) -> Client:
    """`url` may list several servers of one cluster, separated by commas."""
    callbacks = _Logged(name)
    callbacks.client = await nats.connect(
        [u.strip() for u in url.split(",") if u.strip()],
        name=name,
        connect_timeout=connect_timeout,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        ping_interval=PING_INTERVAL_S,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        # The pull feed buffers whole batches; nats-py's default 64 MiB is kept, but the
        # message count limit must exceed a pull batch by far.
        pending_size=256 * 1024 * 1024,
        error_cb=callbacks.error,
        disconnected_cb=callbacks.disconnected,
        reconnected_cb=callbacks.reconnected,
    )
    return callbacks.client


Callback = Callable[[], Awaitable[None]]


def on_reconnected(nc: Client, callback: Callback) -> None:
    """Run `callback` after every reconnect, in a task of its own, after the callbacks already
    registered (nats-py has a single callback slot).

    nats-py awaits its reconnected callback inside the reconnect and counts an exception
    there as a failed reconnect. The node's callbacks restart KV watches, which time out while
    a cluster that just lost a server re-elects leaders: nats-py then reconnected again while
    the first new connection's reader still ran, the two readers met on one socket, and the
    read loop died ("read() called while another coroutine is already waiting"). The
    connection then flapped or went deaf: that is how the three-server test lost a node's
    control connection. Here nats-py only starts the task; a newer reconnect cancels an
    older callback still running, and a failure is logged."""
    first: Callback | None = nc._reconnected_cb
    running: asyncio.Task[None] | None = None

    async def both() -> None:
        nonlocal running
        if first is not None:
            await first()
        if running is not None:
            running.cancel()
        running = asyncio.create_task(_logged(callback))

    nc._reconnected_cb = both


async def _logged(callback: Callback) -> None:
    try:
        await callback()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("after-reconnect callback failed", extra={"error": repr(exc)})
