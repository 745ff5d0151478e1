"""The pure parts of alerting, with an explicit clock: the routing tree, incident lifecycle
(group_wait, group_interval, repeat, escalation, auto-resolve, flapping), maintenance window
arithmetic, signed links, the template sandbox and the webhook signature."""

import hashlib
import hmac
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftlock.alerting import links, templates
from driftlock.alerting.config import (
    Defaults,
    EscalationStep,
    LabelRule,
    MaintenanceWindow,
    Matchers,
    Route,
    Routing,
)
from driftlock.alerting.incident import ChangeKind, Incident, Status, acknowledge, add_anomalies
from driftlock.alerting.lifecycle import advance, next_due
from driftlock.alerting.matching import anomaly_labels, group_of, resolve_routes
from driftlock.alerting.senders import signature
from driftlock.alerting.suppress import in_window
from driftlock.wire.messages import Anomaly, AnomalyKind

T0 = 1_800_000_000.0


def anomaly(metric: str, seq: int, kind: AnomalyKind = AnomalyKind.SPIKE) -> Anomaly:
    return Anomaly(
        id=f"acme.{metric}.{seq}.0", tenant="acme", metric=metric, ts=T0, value=9.0, score=0.9,
        expected=(1.0, 2.0), kind=kind, detectors=["robust_level"], seq=seq, index=0,
        detected_at=T0,
    )  # fmt: skip


def routes_for(routing: Routing, metric: str, kind: AnomalyKind = AnomalyKind.SPIKE) -> list[str]:
    labels = anomaly_labels(anomaly(metric, 1, kind), routing.labels)
    return [r.route for r in resolve_routes(routing, labels, 0.9, Defaults())]


def test_routing_tree_first_match_continue_and_inheritance() -> None:
    routing = Routing(
        labels=[LabelRule(metric="db:*", labels={"team": "storage"})],
        route=Route(name="root", channels=["all"], group_wait_s=5, routes=[
            Route(name="storage", match=Matchers(labels={"team": "storage"}), continue_=True,
                  channels=["dba"], routes=[
                      Route(name="db-dips", match=Matchers(kinds=["dip"]), group_wait_s=0)]),
            Route(name="db-any", match=Matchers(metric="db:*")),
            Route(name="never", match=Matchers(metric="db:*")),
        ]),
    )  # fmt: skip
    assert routes_for(routing, "web:latency") == ["root"]
    assert routes_for(routing, "db:locks") == ["storage", "db-any"]
    assert routes_for(routing, "db:locks", AnomalyKind.DIP) == ["db-dips", "db-any"]
    labels = anomaly_labels(anomaly("db:locks", 1, AnomalyKind.DIP), routing.labels)
    dips, any_db = resolve_routes(routing, labels, 0.9, Defaults())
    assert dips.channels == ("dba",) and dips.group_wait_s == 0
    assert any_db.channels == ("all",) and any_db.group_wait_s == 5
    assert group_of(dips, labels) == {"metric": "db:locks"}
    assert labels["namespace"] == "db" and labels["team"] == "storage"


def fresh(route_overrides: dict[str, float] | None = None) -> tuple[Incident, Routing]:
    settings = {"group_wait_s": 10.0, "group_interval_s": 60.0, "repeat_interval_s": 600.0,
                "resolve_after_s": 300.0, **(route_overrides or {})}  # fmt: skip
    routing = Routing(route=msgspec.convert({"channels": ["a"], **settings}, Route))
    a = anomaly("cpu", 1)
    [route] = resolve_routes(routing, anomaly_labels(a, []), 0.9, Defaults())
    inc = add_anomalies(None, "k", route, {"metric": "cpu"}, [(a, anomaly_labels(a, []))], T0)
    assert inc is not None
    return inc, routing


def last_kind(inc: Incident) -> ChangeKind:
    return inc.changes[-1].kind


def test_lifecycle_group_wait_update_repeat_escalate_resolve() -> None:
    inc, _ = fresh({"resolve_after_s": 2000.0})
    steps = [EscalationStep(after_s=120, channels=["boss"])]
    assert not advance(inc, T0 + 9, None, steps)  # group_wait not over
    assert advance(inc, T0 + 10, None, steps)
    assert [c.kind for c in inc.changes] == [ChangeKind.OPENED]
    # Redelivered anomaly: nothing changes; a new one is an update after group_interval.
    assert add_anomalies(inc, "k", inc.route, inc.group, [(anomaly("cpu", 1), {})], T0 + 20) is None
    add_anomalies(inc, "k", inc.route, inc.group, [(anomaly("cpu", 2), {})], T0 + 20)
    assert not advance(inc, T0 + 69, None, steps)
    assert advance(inc, T0 + 70, None, steps)
    assert last_kind(inc) is ChangeKind.UPDATED
    assert advance(inc, T0 + 130, None, steps)  # escalation step, 120 s after the first notice
    assert last_kind(inc) is ChangeKind.ESCALATED and inc.changes[-1].channels == ["boss"]
    assert not advance(inc, T0 + 669, None, steps)
    assert advance(inc, T0 + 670, None, steps)  # repeat_interval after the last notice
    assert last_kind(inc) is ChangeKind.REPEATED
    assert inc.changes[-1].channels == ["a", "boss"]
    assert advance(inc, T0 + 2019, None, steps)  # overdue reminders collapse into one
    assert [c.kind for c in inc.changes].count(ChangeKind.REPEATED) == 2
    assert advance(inc, T0 + 2020, None, steps)  # quiet for resolve_after since T0 + 20
    assert inc.status is Status.RESOLVED
    assert last_kind(inc) is ChangeKind.RESOLVED
    assert inc.changes[-1].channels == ["a", "boss"]


def test_acknowledged_incident_neither_escalates_nor_repeats() -> None:
    inc, _ = fresh({"group_wait_s": 0})
    steps = [EscalationStep(after_s=5, channels=["boss"])]
    advance(inc, T0, None, steps)
    assert acknowledge(inc, "user:x", T0 + 1)
    assert not acknowledge(inc, "user:x", T0 + 2)  # once
    before = len(inc.changes)
    for t in (10, 100, 299):
        advance(inc, T0 + t, None, steps)
    assert len(inc.changes) == before
    assert [c.kind for c in inc.changes] == [ChangeKind.OPENED, ChangeKind.ACKNOWLEDGED]


def test_suppressed_incident_that_resolves_is_never_notified() -> None:
    inc, _ = fresh({"group_wait_s": 0})
    assert advance(inc, T0 + 1, "silence s1", ())
    assert inc.suppressed == "silence s1" and not inc.changes
    advance(inc, T0 + 400, "silence s1", ())
    assert inc.status is Status.RESOLVED and not inc.changes


def test_maintenance_window_across_midnight_in_a_time_zone() -> None:
    zone = ZoneInfo("Europe/Berlin")
    window = MaintenanceWindow(
        id="w", tenant="acme", name="nightly", matchers=Matchers(), days=[4],  # Friday
        start="23:00", duration_s=3 * 3600, timezone="Europe/Berlin",
    )  # fmt: skip

    def at(day: int, hour: int, minute: int = 0) -> float:
        return datetime(2024, 11, day, hour, minute, tzinfo=zone).timestamp()

    assert in_window(window, at(22, 23, 30))  # Friday night
    assert in_window(window, at(23, 1, 59))  # Saturday morning, same occurrence
    assert not in_window(window, at(23, 2, 0))
    assert not in_window(window, at(22, 22, 59))
    assert not in_window(window, at(23, 23, 30))  # Saturday night: not a window day


def test_signed_links() -> None:
    key = b"k" * 32
    token = links.sign(key, links.AckToken("acme", "abc", 2, time.time() + 60))
    assert links.verify(key, token, time.time()).incident == "abc"
    payload, mac = token.split(".")
    forged = links.sign(b"other", links.AckToken("globex", "abc", 2, time.time() + 60))
    for bad in (f"{forged.split('.')[0]}.{mac}", f"{payload}.{forged.split('.')[1]}", "x", ""):
        with pytest.raises(links.InvalidToken):
            links.verify(key, bad, time.time())
    with pytest.raises(links.InvalidToken, match="expired"):
        links.verify(key, token, time.time() + 120)


def test_templates_are_sandboxed_and_checked() -> None:
    inc, _ = fresh({"group_wait_s": 0})
    advance(inc, T0, None, ())
    from driftlock.alerting.messages import context

    ctx = context(inc, inc.changes[0], {"ack": "http://x/ack", "incident": ""})
    assert templates.render("{{ incident.metrics[0] }}!", "default", ctx) == "cpu!"
    # Reaching Python internals is refused by the sandbox: the default text goes out instead.
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    assert templates.render(escape, "default {{ tenant }}", ctx) == "default acme"
    body = templates.render(None, templates.EMAIL_BODY, ctx)
    assert "Acknowledge: http://x/ack" in body and "cpu  spike  value 9" in body
    ctx["incident"]["labels"]["team"] = "<script>x</script>"
    html = templates.render("<p>{{ incident.labels.team }}</p>", "", ctx, html=True)
    assert html == "<p>&lt;script&gt;x&lt;/script&gt;</p>"  # HTML e-mail escapes
    assert "<script>" in templates.render("{{ incident.labels.team }}", "", ctx)  # text: as is
    assert templates.syntax_error("{{ a") is not None
    assert templates.syntax_error("{% for x in y %}{{ x }}{% endfor %}") is None


def test_webhook_signature_is_hmac_over_timestamp_and_body() -> None:
    expected = hmac.new(b"secret", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert signature("secret", "1700000000", b"{}") == f"sha256={expected}"


def test_a_channel_named_twice_is_told_once() -> None:
    inc, _ = fresh({"group_wait_s": 0})
    steps = [EscalationStep(after_s=0, channels=["boss", "boss", "a"])]
    advance(inc, T0, None, steps)  # opened
    advance(inc, T0, None, steps)  # the first step
    assert [c.channels for c in inc.changes] == [["a"], ["boss", "a"]]
    assert inc.notified_channels == ["a", "boss"]


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["anomaly", "tick", "ack"]),
            st.floats(min_value=0, max_value=50),
            st.sampled_from([None, "silence s"]),
        ),
        max_size=12,
    ),
    probe=st.floats(min_value=0, max_value=50),
    probe_reason=st.sampled_from([None, "silence s"]),
    timing=st.tuples(*(st.sampled_from([0.0, 1.0, 5.0, 20.0]) for _ in range(5))),
)
def test_next_due_agrees_with_advance(
    ops: list[tuple[str, float, str | None]],
    probe: float,
    probe_reason: str | None,
    timing: tuple[float, float, float, float, float],
) -> None:
    """The tick skips an incident unless its suppression changed or `next_due` has come;
    that is only right if `advance` changes it exactly then."""
    gw, gi, ri, ra, step = timing
    inc, _ = fresh({"group_wait_s": gw, "group_interval_s": gi, "repeat_interval_s": ri,
                    "resolve_after_s": ra + 0.5})  # fmt: skip
    steps = [EscalationStep(after_s=step, channels=["boss"])]
    now, seq = T0, 10
    for op, dt, reason in ops:
        now += dt
        if op == "anomaly":
            seq += 1
            add_anomalies(inc, "k", inc.route, inc.group, [(anomaly("cpu", seq), {})], now)
        elif op == "ack":
            acknowledge(inc, "user:x", now)
        else:
            advance(inc, now, reason, steps)
    at = now + probe
    expected = inc.status is not Status.RESOLVED and (
        probe_reason != inc.suppressed or at >= next_due(inc, steps)
    )
    copy = msgspec.json.decode(msgspec.json.encode(inc), type=Incident)
    assert advance(copy, at, probe_reason, steps) == expected
