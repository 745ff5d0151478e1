"""A NATS connection that reconnects forever and whose callbacks log and never raise."""

import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client

log = logging.getLogger("driftlock.bus")


async def _on_error(exc: Exception) -> None:
    log.warning("nats error", extra={"error": repr(exc)})


async def _on_disconnected() -> None:
    log.warning("nats disconnected")


async def _on_reconnected() -> None:
    log.info("nats reconnected")


PING_INTERVAL_S = 5.0
MAX_OUTSTANDING_PINGS = 3
"""A connection whose server answered none of 3 PINGs (at most 20 s) is dropped and made
again. nats-py's own default is 2 minutes apart, 2 unanswered: after a server of a cluster
was killed, nats-py's read loop sometimes dies (RuntimeError: "read() called while another
coroutine is already waiting") while the connection still counts as connected, and every
request, publish ack and pulled message then went nowhere for minutes."""


async def connect(url: str, *, name: str, connect_timeout: float = 5.0) -> Client:
    """`url` may list several servers of one cluster, separated by commas."""
    return await nats.connect(
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
        error_cb=_on_error,
        disconnected_cb=_on_disconnected,
        reconnected_cb=_on_reconnected,
    )


Callback = Callable[[], Awaitable[None]]


def on_reconnected(nc: Client, callback: Callback) -> None:
    """Run `callback` after every reconnect, after those already registered (nats-py has a
    single callback slot)."""
    first: Callback | None = nc._reconnected_cb

    async def both() -> None:
        if first is not None:
            await first()
        await callback()

    nc._reconnected_cb = both
