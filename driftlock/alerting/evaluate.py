"""One evaluation pass at time `now`: what suppresses an incident (silences, maintenance
windows, inhibitions) and its escalation steps, from the watched configuration, indexed by
tenant once per pass."""

from collections import defaultdict
from collections.abc import Sequence
from typing import TypeVar

from driftlock.alerting.config import EscalationStep
from driftlock.alerting.incident import Incident
from driftlock.alerting.lifecycle import advance, next_due
from driftlock.alerting.store import AlertingStore, Keyed
from driftlock.alerting.suppress import inhibited_by, maintenance_by, silenced_by

T = TypeVar("T")


def _by_tenant(cache: Keyed[T]) -> dict[str, list[T]]:
    index: dict[str, list[T]] = defaultdict(list)
    for key, value in cache.items():
        index[key.split(".", 1)[0]].append(value)
    return index


class Evaluator:
    def __init__(self, store: AlertingStore, now: float) -> None:
        self.store, self.now = store, now
        self._silences = _by_tenant(store.silences)
        self._windows = _by_tenant(store.windows)
        self._inhibitions = _by_tenant(store.inhibitions)
        self._incidents: dict[str, list[Incident]] | None = None

    def suppressed(self, inc: Incident) -> str | None:
        t = inc.tenant
        reason = silenced_by(inc, self._silences.get(t, ()), self.now) or maintenance_by(
            inc, self._windows.get(t, ()), self.now
        )
        if reason is None and self._inhibitions.get(t):
            if self._incidents is None:
                self._incidents = _by_tenant(self.store.incidents)
            reason = inhibited_by(inc, self._inhibitions[t], self._incidents.get(t, ()))
        return reason

    def steps(self, inc: Incident) -> Sequence[EscalationStep]:
        if inc.route.policy is None:
            return ()
        policy = self.store.policies.get(f"{inc.tenant}.{inc.route.policy}")
        return policy.steps if policy is not None else ()

    def apply(self, inc: Incident) -> bool:
        return advance(inc, self.now, self.suppressed(inc), self.steps(inc))

    def changes(self, inc: Incident) -> bool:
        """Whether `apply` would change the incident, without touching it: its suppression
        changed, or something falls due (see `next_due`)."""
        return self.suppressed(inc) != inc.suppressed or self.now >= next_due(inc, self.steps(inc))
