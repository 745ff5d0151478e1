"""Per-channel state every alerting worker shares through KV: health after each attempt,
and the hourly rate cap."""

import logging

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from driftlock.alerting.config import Channel
from driftlock.alerting.records import ChannelHealth, HealthState
from driftlock.alerting.store import AlertingStore

log = logging.getLogger("driftlock.alerting")


async def within_cap(store: AlertingStore, channel: Channel, now: float) -> bool:
    """Count one notification against the channel's hourly cap (shared by every worker
    through compare-and-set on a counter per clock hour); False when it is used up."""
    cap = channel.max_per_hour
    if cap is None:
        return True
    key = f"{channel.tenant}.{channel.id}.{int(now // 3600)}"
    kv = store.ratecap
    for _ in range(50):
        try:
            entry = await kv.get(key)
            count, revision = int(entry.value or b"0"), entry.revision
        except KeyNotFoundError:
            count, revision = 0, None
        if count >= cap:
            return False
        try:
            if revision is None:
                await kv.create(key, str(count + 1).encode())
            else:
                await kv.update(key, str(count + 1).encode(), revision)
        except KeyWrongLastSequenceError:
            continue
        return True
    return False


async def record_health(
    store: AlertingStore, channel: Channel, error: str | None, now: float
) -> None:
    """The channel's health after one attempt (None: it succeeded), for operators to see."""
    key = f"{channel.tenant}.{channel.id}"
    old = store.health.get(key)
    if error is None:
        healthy = old is not None and old.state is HealthState.OK
        if healthy and old and old.last_success_at and now - old.last_success_at < 60:
            return  # spare KV a write per notification on a healthy channel
        new = ChannelHealth(state=HealthState.OK, last_success_at=now)
        if old is not None:
            new.last_error, new.last_failure_at = old.last_error, old.last_failure_at
    else:
        new = ChannelHealth(
            state=HealthState.FAILING,
            consecutive_failures=(old.consecutive_failures if old else 0) + 1,
            last_error=error[:500],
            last_failure_at=now,
            last_success_at=old.last_success_at if old else None,
        )
    try:
        await store.health.put(key, new)
    except Exception as exc:  # health is advisory; the send outcome is what matters
        log.warning("could not record channel health", extra={"error": repr(exc)})
