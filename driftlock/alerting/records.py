"""Operational records the alerter writes: notification log entries, channel health and
dead letters."""

from enum import StrEnum

import msgspec


class LogState(StrEnum):
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"
    CAPPED = "capped"


class LogEntry(msgspec.Struct, kw_only=True):
    """Notification log (Alertmanager's nflog, without gossip): one key per incident change
    and channel. Whoever creates it owns the send until `lease_until`; a worker that dies
    mid-send leaves an expired lease that another worker takes over with compare-and-set."""

    state: LogState
    worker: str
    lease_until: float
    at: float
    attempts: int = 0
    error: str = ""


class HealthState(StrEnum):
    OK = "ok"
    FAILING = "failing"


class ChannelHealth(msgspec.Struct, kw_only=True):
    state: HealthState
    consecutive_failures: int = 0
    last_error: str = ""
    last_success_at: float | None = None
    last_failure_at: float | None = None


class DeadLetter(msgspec.Struct, kw_only=True):
    """A notification that was given up on: after the last retry, or over the rate cap."""

    tenant: str
    incident: str
    change: int
    kind: str
    channel: str
    reason: str
    error: str
    attempts: int
    at: float
