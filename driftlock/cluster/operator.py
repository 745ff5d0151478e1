"""`driftlock cluster …`: what an operator runs against a live cluster."""

import asyncio
import json

import nats
from nats.aio.client import Client

from driftlock.bus.buckets import key_value
from driftlock.cluster.membership import request_drain
from driftlock.cluster.status import cluster_status, format_status
from driftlock.errors import ConfigError
from driftlock.settings import Settings


async def _quiet(exc: Exception) -> None:
    """The failure is reported once, by the command, not as a traceback per attempt."""


async def _connect(url: str) -> Client:
    """One attempt, no reconnect loop: a command should fail fast and say why."""
    try:
        return await asyncio.wait_for(
            nats.connect(
                [u.strip() for u in url.split(",") if u.strip()],
                name="driftlock-cluster-cli",
                connect_timeout=3,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=_quiet,
            ),
            timeout=5,
        )
    except Exception as exc:
        reason = "no connection within 5 s" if isinstance(exc, TimeoutError) else repr(exc)
        raise ConfigError(f"cannot reach NATS at {url}: {reason}") from None


async def show_status(settings: Settings, *, as_json: bool) -> str:
    nc = await _connect(settings.nats_url)
    try:
        status = await cluster_status(
            nc.jetstream(), settings.prefix, settings.partitions, settings.member_ttl_s
        )
    finally:
        await nc.close()
    return json.dumps(status, indent=2) if as_json else format_status(status)


async def set_draining(settings: Settings, node_id: str, *, drain: bool) -> None:
    nc = await _connect(settings.nats_url)
    try:
        drains = await key_value(
            nc.jetstream(), f"{settings.prefix}_drains", replicas=settings.replicas
        )
        await request_drain(drains, node_id, drain=drain)
    finally:
        await nc.close()
