"""Labels of an anomaly, matchers, and the routing tree: which routes an anomaly takes and
which incident (group) it joins there."""

import fnmatch
import hashlib
from collections.abc import Iterator, Mapping

from driftlock.alerting.config import Defaults, LabelRule, Matchers, Route, RouteSettings, Routing
from driftlock.wire.messages import Anomaly


def anomaly_labels(anomaly: Anomaly, rules: list[LabelRule]) -> dict[str, str]:
    """Built-in labels (tenant, metric, kind, namespace: the metric id before its first ':')
    plus those of every label rule whose glob matches the metric; later rules win."""
    labels = {
        "tenant": anomaly.tenant,
        "metric": anomaly.metric,
        "kind": str(anomaly.kind),
        "namespace": anomaly.metric.split(":", 1)[0],
    }
    for rule in rules:
        if fnmatch.fnmatchcase(anomaly.metric, rule.metric):
            labels.update(rule.labels)
    return labels


def matches(m: Matchers, labels: Mapping[str, str], score: float = 1.0) -> bool:
    metric = labels.get("metric")
    if m.metric != "*" and (metric is None or not fnmatch.fnmatchcase(metric, m.metric)):
        return False
    if m.kinds and labels.get("kind") not in m.kinds:
        return False
    if score < m.min_score:
        return False
    return all(labels.get(k) == v for k, v in m.labels.items())


def default_routing(channel_ids: list[str]) -> Routing:
    """A tenant that configured channels but no routes gets everything on every channel."""
    return Routing(route=Route(name="root", channels=sorted(channel_ids)))


def resolve_routes(
    routing: Routing, labels: Mapping[str, str], score: float, defaults: Defaults
) -> list[RouteSettings]:
    """Alertmanager's walk: the root always matches; inside a node the first matching child
    wins unless it has `continue`, in which case the next matching siblings are taken too;
    a node none of whose children match is itself the result."""
    root = _settings(routing.route, None, defaults, "root")
    return list(_walk(routing.route, root, labels, score, defaults))


def _walk(
    node: Route,
    here: RouteSettings,
    labels: Mapping[str, str],
    score: float,
    defaults: Defaults,
) -> Iterator[RouteSettings]:
    found = False
    for i, child in enumerate(node.routes):
        if not matches(child.match, labels, score):
            continue
        child_settings = _settings(child, here, defaults, child.name or f"{here.route}.{i}")
        yield from _walk(child, child_settings, labels, score, defaults)
        found = True
        if not child.continue_:
            break
    if not found:
        yield here


def _settings(
    r: Route, parent: RouteSettings | None, defaults: Defaults, name: str
) -> RouteSettings:
    p = parent
    return RouteSettings(
        route=name,
        channels=tuple(r.channels if r.channels is not None else (p.channels if p else ())),
        policy=r.policy if r.policy is not None else (p.policy if p else None),
        group_by=tuple(
            r.group_by if r.group_by is not None else (p.group_by if p else defaults.group_by)
        ),
        group_wait_s=_f(r.group_wait_s, p.group_wait_s if p else defaults.group_wait_s),
        group_interval_s=_f(
            r.group_interval_s, p.group_interval_s if p else defaults.group_interval_s
        ),
        repeat_interval_s=_f(
            r.repeat_interval_s, p.repeat_interval_s if p else defaults.repeat_interval_s
        ),
        resolve_after_s=_f(r.resolve_after_s, p.resolve_after_s if p else defaults.resolve_after_s),
        flap_window_s=_f(r.flap_window_s, p.flap_window_s if p else defaults.flap_window_s),
        correlate_s=_f(r.correlate_s, p.correlate_s if p else defaults.correlate_s),
        flap_threshold=int(
            r.flap_threshold
            if r.flap_threshold is not None
            else (p.flap_threshold if p else defaults.flap_threshold)
        ),
    )


def _f(mine: float | None, inherited: float) -> float:
    return float(mine) if mine is not None else inherited


def group_of(settings: RouteSettings, labels: Mapping[str, str]) -> dict[str, str]:
    """The group_by labels of one anomaly; a label it lacks groups as the empty string."""
    return {key: labels.get(key, "") for key in settings.group_by}


def incident_key(tenant: str, settings: RouteSettings, group: Mapping[str, str]) -> str:
    """Stable id of the incident slot of one group on one route (hex, KV-key safe)."""
    text = "\x00".join([tenant, settings.route, *(f"{k}={v}" for k, v in sorted(group.items()))])
    return hashlib.sha256(text.encode()).hexdigest()[:20]
