"""Incidents: a group of anomalies on one route, with a lifecycle open → acknowledged →
resolved, and an outbox of changes to notify. Pure data and pure functions; the alerter
applies them inside compare-and-set updates, so whichever worker wins a race, each change
is recorded exactly once."""

from enum import StrEnum

import msgspec

from driftlock.alerting.config import RouteSettings
from driftlock.wire.messages import Anomaly

KEEP_ANOMALIES = 20
KEEP_SEEN_IDS = 500
KEEP_CHANGES = 50
KEEP_METRICS = 50


class Status(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class ChangeKind(StrEnum):
    OPENED = "opened"
    UPDATED = "updated"
    REPEATED = "repeated"
    ESCALATED = "escalated"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    REOPENED = "reopened"
    FLAPPING = "flapping"


class Change(msgspec.Struct, kw_only=True):
    """One notification-worthy change; `n` is unique per incident slot for ever, so the
    notification log key (incident, n, channel) never repeats."""

    n: int
    kind: ChangeKind
    at: float
    channels: list[str]
    delivered: list[str] = msgspec.field(default_factory=list)
    """channels done with it: sent, dead-lettered or capped"""
    step: int = 0


class AnomalyRef(msgspec.Struct, kw_only=True):
    id: str
    metric: str
    ts: float
    value: float
    score: float
    kind: str
    expected: tuple[float, float]
    detected_at: float


class Incident(msgspec.Struct, kw_only=True):
    id: str
    tenant: str
    occurrence: int
    route: RouteSettings
    group: dict[str, str]
    labels: dict[str, str]
    """labels every anomaly of the incident shares: what silences and inhibitions match"""
    status: Status = Status.OPEN
    created_at: float
    updated_at: float
    last_anomaly_at: float
    first_detected_at: float
    anomalies: list[AnomalyRef] = msgspec.field(default_factory=list)
    anomaly_count: int = 0
    metrics: list[str] = msgspec.field(default_factory=list)
    max_score: float = 0.0
    seen_ids: list[str] = msgspec.field(default_factory=list)
    notified_count: int = 0
    """anomaly_count when the last opened/updated notification went out"""
    first_notified_at: float | None = None
    last_notified_at: float | None = None
    escalation_step: int = 0
    notified_channels: list[str] = msgspec.field(default_factory=list)
    acked_at: float | None = None
    acked_by: str | None = None
    resolved_at: float | None = None
    opens: list[float] = msgspec.field(default_factory=list)
    """times this slot (re)opened within the flap window"""
    flapping: bool = False
    suppressed: str | None = None
    change_seq: int = 0
    changes: list[Change] = msgspec.field(default_factory=list)
    trace: dict[str, str] = msgspec.field(default_factory=dict)
    """W3C trace context of the anomaly that opened it, when its message carried one:
    notifications continue that trace"""

    def pending(self) -> list[Change]:
        return [c for c in self.changes if len(c.delivered) < len(c.channels)]


def ref(a: Anomaly) -> AnomalyRef:
    return AnomalyRef(
        id=a.id,
        metric=a.metric,
        ts=a.ts,
        value=a.value,
        score=a.score,
        kind=str(a.kind),
        expected=a.expected,
        detected_at=a.detected_at,
    )


def add_anomalies(
    current: Incident | None,
    key: str,
    route: RouteSettings,
    group: dict[str, str],
    batch: list[tuple[Anomaly, dict[str, str]]],
    now: float,
    traces: dict[str, dict[str, str]] | None = None,
) -> Incident | None:
    """The incident after this batch, or None when every anomaly was already applied (a
    redelivery). A resolved slot reopens within the flap window, else starts over.
    `traces` maps anomaly ids to the trace context their messages carried."""
    fresh = [(a, labels) for a, labels in batch if current is None or a.id not in current.seen_ids]
    if not fresh:
        return None
    inc = current
    if inc is None or (
        inc.status is Status.RESOLVED and now - (inc.resolved_at or 0.0) > inc.route.flap_window_s
    ):
        inc = _new(current, key, route, group, fresh[0], now)
        inc.trace = (traces or {}).get(fresh[0][0].id, {})
    elif inc.status is Status.RESOLVED:
        _reopen(inc, now)
    for a, labels in fresh:
        _absorb(inc, a, labels, now)
    return inc


def _new(
    previous: Incident | None,
    key: str,
    route: RouteSettings,
    group: dict[str, str],
    first: tuple[Anomaly, dict[str, str]],
    now: float,
) -> Incident:
    a, labels = first
    return Incident(
        id=key,
        tenant=a.tenant,
        occurrence=previous.occurrence + 1 if previous else 1,
        route=route,
        group=group,
        labels=dict(labels),
        created_at=now,
        updated_at=now,
        last_anomaly_at=now,
        first_detected_at=a.detected_at,
        opens=[now],
        change_seq=previous.change_seq if previous else 0,
        seen_ids=previous.seen_ids[-KEEP_SEEN_IDS:] if previous else [],
        # Undelivered changes of the last occurrence still go out.
        changes=previous.pending() if previous else [],
    )


def _reopen(inc: Incident, now: float) -> None:
    """Back to open within the flap window: flapping once it opened `flap_threshold` times
    in the window, and then held open (one notification) instead of paging on every cycle."""
    window = inc.route.flap_window_s
    inc.opens = [t for t in inc.opens if now - t <= window] + [now]
    inc.status, inc.resolved_at, inc.acked_at, inc.acked_by = Status.OPEN, None, None, None
    if len(inc.opens) >= inc.route.flap_threshold:
        if not inc.flapping:
            inc.flapping = True
            emit(inc, ChangeKind.FLAPPING, now, inc.notified_channels)
        return
    if inc.notified_channels:
        emit(inc, ChangeKind.REOPENED, now, inc.notified_channels)
        inc.notified_count = inc.anomaly_count + 1  # the reopen notice covers this anomaly


def _absorb(inc: Incident, a: Anomaly, labels: dict[str, str], now: float) -> None:
    inc.labels = {k: v for k, v in inc.labels.items() if labels.get(k) == v}
    inc.anomalies = [*inc.anomalies, ref(a)][-KEEP_ANOMALIES:]
    inc.anomaly_count += 1
    inc.max_score = max(inc.max_score, a.score)
    if a.metric not in inc.metrics and len(inc.metrics) < KEEP_METRICS:
        inc.metrics.append(a.metric)
    inc.seen_ids = [*inc.seen_ids, a.id][-KEEP_SEEN_IDS:]
    inc.last_anomaly_at = inc.updated_at = now


def emit(inc: Incident, kind: ChangeKind, now: float, channels: list[str], step: int = 0) -> None:
    """Record a change to notify on `channels` (nothing when there are none)."""
    if not channels:
        return
    inc.change_seq += 1
    # A channel named twice (in a route or a step) is still told once.
    unique = list(dict.fromkeys(channels))
    change = Change(n=inc.change_seq, kind=kind, at=now, channels=unique, step=step)
    # Delivered changes are history and only the recent ones are kept; pending ones stay.
    done = [c for c in inc.changes if len(c.delivered) >= len(c.channels)][-KEEP_CHANGES:]
    pending = inc.pending()
    inc.changes = [*sorted(done + pending, key=lambda c: c.n), change]
    inc.updated_at = now


def acknowledge(inc: Incident, who: str, now: float) -> bool:
    if inc.status is not Status.OPEN:
        return False
    inc.status, inc.acked_at, inc.acked_by = Status.ACKNOWLEDGED, now, who
    emit(inc, ChangeKind.ACKNOWLEDGED, now, inc.notified_channels)
    return True


def resolve(inc: Incident, now: float) -> bool:
    if inc.status is Status.RESOLVED:
        return False
    inc.status, inc.resolved_at, inc.flapping = Status.RESOLVED, now, False
    emit(inc, ChangeKind.RESOLVED, now, inc.notified_channels)
    return True


def mark_delivered(inc: Incident, n: int, channel: str) -> bool:
    for change in inc.changes:
        if change.n == n and channel in change.channels and channel not in change.delivered:
            change.delivered.append(channel)
            return True
    return False
