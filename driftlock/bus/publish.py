"""Publishing a batch to JetStream and waiting until every message is stored."""

import asyncio
from collections.abc import Iterable

from nats.js import JetStreamContext
from nats.js.api import PubAck

Message = tuple[str, bytes, dict[str, str] | None]
"""(subject, payload, headers)"""


async def publish_all(js: JetStreamContext, messages: Iterable[Message], timeout: float) -> None:
    """Publish asynchronously, then wait for every ack; raise if one does not come in time.

    nats-py waits for a free slot among its pending acks with no deadline unless told one.
    With acks lost (the connection's server died), a batch of more messages than slots
    waited forever while holding every slot, and so did every other publisher of the
    connection. Here a stall fails after `timeout`, and on any failure the batch's pending
    futures are cancelled, which frees their slots."""
    futures: list[asyncio.Future[PubAck]] = []
    try:
        for subject, payload, headers in messages:
            futures.append(
                await js.publish_async(subject, payload, headers=headers, wait_stall=timeout)
            )
        async with asyncio.timeout(timeout):  # lighter than wait_for(gather(...)) per batch
            for future in futures:
                await future
    except BaseException:
        for future in futures:
            future.cancel()
        raise
