"""Time moves incidents on: the first notification after group_wait, updates at most every
group_interval, reminders every repeat_interval, escalation steps, and resolution after a
quiet period (longer for a flapping incident, which is held open). Pure: `now` is given."""

import math
from collections.abc import Sequence

from driftlock.alerting.config import EscalationStep
from driftlock.alerting.incident import ChangeKind, Incident, Status, emit, resolve


def advance(
    inc: Incident,
    now: float,
    suppressed: str | None,
    steps: Sequence[EscalationStep] = (),
) -> bool:
    """Apply what is due at `now`; True when the incident changed. `suppressed` names the
    silence, maintenance window or inhibition that holds notifications back, if any."""
    if inc.status is Status.RESOLVED:
        return False
    quiet = now - inc.last_anomaly_at
    hold = inc.route.flap_window_s if inc.flapping else inc.route.resolve_after_s
    if quiet >= hold:
        return resolve(inc, now)
    changed = inc.suppressed != suppressed
    inc.suppressed = suppressed
    if inc.status is not Status.OPEN or suppressed is not None:
        return changed
    if inc.first_notified_at is None:
        return _first(inc, now) or changed
    if not inc.flapping:
        changed = _update_or_repeat(inc, now) or changed
    return _escalate(inc, now, steps) or changed


def _first(inc: Incident, now: float) -> bool:
    if now < inc.created_at + inc.route.group_wait_s:
        return False
    channels = list(inc.route.channels)
    emit(inc, ChangeKind.OPENED, now, channels)
    inc.first_notified_at = inc.last_notified_at = now
    inc.notified_count = inc.anomaly_count
    _remember(inc, channels)
    return True


def _update_or_repeat(inc: Incident, now: float) -> bool:
    last = inc.last_notified_at if inc.last_notified_at is not None else now
    if inc.anomaly_count > inc.notified_count and now >= last + inc.route.group_interval_s:
        kind = ChangeKind.UPDATED
    elif now >= last + inc.route.repeat_interval_s:
        kind = ChangeKind.REPEATED
    else:
        return False
    emit(inc, kind, now, inc.notified_channels or list(inc.route.channels))
    inc.last_notified_at, inc.notified_count = now, inc.anomaly_count
    return True


def _escalate(inc: Incident, now: float, steps: Sequence[EscalationStep]) -> bool:
    """Unacknowledged: each step fires once, `after_s` after the first notification."""
    assert inc.first_notified_at is not None
    changed = False
    while inc.escalation_step < len(steps):
        step = steps[inc.escalation_step]
        if now < inc.first_notified_at + step.after_s:
            break
        inc.escalation_step += 1
        emit(inc, ChangeKind.ESCALATED, now, step.channels, step=inc.escalation_step)
        _remember(inc, step.channels)
        changed = True
    return changed


def _remember(inc: Incident, channels: Sequence[str]) -> None:
    """Channels told about the incident hear about its acknowledgement and resolution."""
    for c in channels:
        if c not in inc.notified_channels:
            inc.notified_channels.append(c)


def next_due(inc: Incident, steps: Sequence[EscalationStep] = ()) -> float:
    """The earliest time `advance` can change the incident while its suppression stays as
    recorded: the tick skips the others without copying them. Mirrors `advance`."""
    if inc.status is Status.RESOLVED:
        return math.inf
    hold = inc.route.flap_window_s if inc.flapping else inc.route.resolve_after_s
    due = inc.last_anomaly_at + hold
    if inc.status is not Status.OPEN or inc.suppressed is not None:
        return due
    if inc.first_notified_at is None:
        return min(due, inc.created_at + inc.route.group_wait_s)
    last = inc.last_notified_at if inc.last_notified_at is not None else inc.first_notified_at
    if not inc.flapping:
        if inc.anomaly_count > inc.notified_count:
            due = min(due, last + inc.route.group_interval_s)
        due = min(due, last + inc.route.repeat_interval_s)
    if inc.escalation_step < len(steps):
        due = min(due, inc.first_notified_at + steps[inc.escalation_step].after_s)
    return due
