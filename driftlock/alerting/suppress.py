"""What holds an incident's notifications back: an active silence, a maintenance window in
progress, or an inhibiting incident. Evaluated at notification time, so a silence that ends
releases what it held."""

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from driftlock.alerting.config import Inhibition, MaintenanceWindow, Silence
from driftlock.alerting.incident import Incident, Status
from driftlock.alerting.matching import matches


def silenced_by(inc: Incident, silences: Iterable[Silence], now: float) -> str | None:
    for s in silences:
        if s.starts_at <= now < s.ends_at and matches(s.matchers, inc.labels, inc.max_score):
            return f"silence {s.id}"
    return None


def in_window(w: MaintenanceWindow, now: float) -> bool:
    """True while one of the window's occurrences (today's or yesterday's, for windows that
    run past midnight) covers `now`."""
    zone = ZoneInfo(w.timezone)
    local = datetime.fromtimestamp(now, UTC).astimezone(zone)
    hours, minutes = (int(part) for part in w.start.split(":"))
    span = min(8, int(w.duration_s // 86400) + 1)
    for days_back in range(span + 1):
        day = (local - timedelta(days=days_back)).date()
        if day.weekday() not in w.days:
            continue
        start = datetime(day.year, day.month, day.day, hours, minutes, tzinfo=zone).timestamp()
        if start <= now < start + w.duration_s:
            return True
    return False


def maintenance_by(inc: Incident, windows: Iterable[MaintenanceWindow], now: float) -> str | None:
    for w in windows:
        if matches(w.matchers, inc.labels, inc.max_score) and in_window(w, now):
            return f"maintenance window {w.id}"
    return None


def inhibited_by(
    inc: Incident, rules: Iterable[Inhibition], incidents: Iterable[Incident]
) -> str | None:
    """An incident is inhibited by another unresolved one of the same tenant that matches a
    rule's source, agrees on the `equal` labels, and is not itself this incident."""
    rules = [r for r in rules if matches(r.target, inc.labels, inc.max_score)]
    if not rules:
        return None
    for other in incidents:
        if other.id == inc.id or other.status is Status.RESOLVED or other.tenant != inc.tenant:
            continue
        for r in rules:
            if not matches(r.source, other.labels, other.max_score):
                continue
            if all(
                inc.labels.get(k) is not None and inc.labels.get(k) == other.labels.get(k)
                for k in r.equal
            ):
                return f"inhibited by incident {other.id} (rule {r.id})"
    return None
