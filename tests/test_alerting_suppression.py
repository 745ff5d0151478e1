"""Escalation, acknowledgement, silences, maintenance windows, inhibition and flap control,
through the gateway's API, a running alerter, real NATS and a real HTTP receiver. Anomalies
are put on DL_ANOMALIES as a node publishes them, so timings are exact."""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from nats.aio.client import Client

from driftlock.alerting import Alerter
from driftlock.bus.server import ManagedNatsServer
from driftlock.gateway.server import GatewayServer
from tests.alerting_helpers import (
    HttpReceiver,
    alerter_config,
    http_receiver,
    kinds,
    post,
    publish_anomaly,
    put,
    running_alerter,
    webhook,
)
from tests.conftest import eventually
from tests.gateway_helpers import Account, new_tenant


@dataclass
class Setup:
    client: httpx.AsyncClient
    owner: Account
    web: HttpReceiver
    alerter: Alerter
    nc: Client

    async def incidents(self) -> list[dict[str, object]]:
        r = await self.client.get("/v1/alerting/incidents", headers=self.owner.auth)
        assert r.status_code == 200, r.text
        found: list[dict[str, object]] = r.json()["incidents"]
        return found

    async def incident_of(self, metric: str) -> dict[str, object]:
        for _ in range(200):
            for inc in await self.incidents():
                if inc["metrics"] == [metric]:
                    return inc
            await asyncio.sleep(0.05)
        raise AssertionError(f"no incident for {metric}")


@pytest.fixture
async def setup(
    gateway: GatewayServer, nc: Client, nats_server: ManagedNatsServer
) -> AsyncIterator[Setup]:
    async with (
        http_receiver() as web,
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
        running_alerter(alerter_config(nats_server.url, gateway.url)) as alerter,
    ):
        owner = await new_tenant(gateway, client, "acme")
        yield Setup(client, owner, web, alerter, nc)


async def test_escalation_runs_until_acknowledged(setup: Setup) -> None:
    s = setup
    primary, _ = await webhook(s.client, s.owner.auth, f"{s.web.url}/primary", "primary")
    backup, _ = await webhook(s.client, s.owner.auth, f"{s.web.url}/backup", "backup")
    policy = await post(s.client, "/v1/alerting/policies", {
        "name": "wake the backup", "steps": [{"after_s": 0.6, "channels": [backup]}],
    }, s.owner.auth)  # fmt: skip
    await put(s.client, "/v1/alerting/routes", {
        "route": {"channels": [primary], "policy": policy["id"], "group_wait_s": 0,
                  "resolve_after_s": 60},
    }, s.owner.auth)  # fmt: skip

    await publish_anomaly(s.nc, "acme", "ignored", 1)
    await publish_anomaly(s.nc, "acme", "handled", 2)
    handled = await s.incident_of("handled")
    r = await s.client.post(f"/v1/alerting/incidents/{handled['id']}/ack", headers=s.owner.auth)
    assert r.status_code == 200 and r.json()["status"] == "acknowledged", r.text
    assert r.json()["acked_by"].startswith("user:")

    def escalated() -> bool:
        return len(s.web.on("/backup")) >= 1

    await eventually(escalated, timeout=5)
    await asyncio.sleep(1.0)  # a second step or the acked incident would show up by now
    assert kinds(s.web.on("/backup")) == [("ignored", "escalated")]
    assert sorted(kinds(s.web.on("/primary"))) == [
        ("handled", "acknowledged"), ("handled", "opened"), ("ignored", "opened"),
    ]  # fmt: skip
    # Acknowledging the escalated one now: both channels that were told hear it.
    ignored = await s.incident_of("ignored")
    assert ignored["escalation_step"] == 1
    await s.client.post(f"/v1/alerting/incidents/{ignored['id']}/ack", headers=s.owner.auth)

    def both_told() -> bool:
        return ("ignored", "acknowledged") in kinds(s.web.on("/backup")) and (
            "ignored", "acknowledged") in kinds(s.web.on("/primary"))  # fmt: skip

    await eventually(both_told, timeout=5)


async def test_silence_holds_notifications_and_its_end_releases_them(setup: Setup) -> None:
    s = setup
    hook, _ = await webhook(s.client, s.owner.auth, f"{s.web.url}/hook")
    await put(s.client, "/v1/alerting/routes", {
        "route": {"channels": [hook], "group_wait_s": 0, "resolve_after_s": 60},
    }, s.owner.auth)  # fmt: skip
    silence = await post(s.client, "/v1/alerting/silences", {
        "matchers": {"metric": "db:*"}, "duration_s": 1.5, "comment": "migration",
    }, s.owner.auth)  # fmt: skip
    assert silence["active"] and silence["created_by"].startswith("user:")
    started = time.time()
    await publish_anomaly(s.nc, "acme", "db:latency", 1)
    await publish_anomaly(s.nc, "acme", "web:latency", 2)

    def web_told() -> bool:
        return ("web:latency", "opened") in kinds(s.web.accepted)

    await eventually(web_told, timeout=5)
    held = await s.incident_of("db:latency")
    assert held["suppressed"] == f"silence {silence['id']}"
    assert kinds(s.web.accepted) == [("web:latency", "opened")]

    def released() -> bool:
        return ("db:latency", "opened") in kinds(s.web.accepted)

    await eventually(released, timeout=5)
    assert time.time() - started >= 1.4  # not before the silence ended
    assert (await s.incident_of("db:latency"))["suppressed"] is None


async def test_maintenance_window_holds_matching_incidents(setup: Setup) -> None:
    s = setup
    hook, _ = await webhook(s.client, s.owner.auth, f"{s.web.url}/hook")
    await put(s.client, "/v1/alerting/routes", {
        "route": {"channels": [hook], "group_wait_s": 0, "resolve_after_s": 60},
    }, s.owner.auth)  # fmt: skip
    now = time.gmtime()
    window = await post(s.client, "/v1/alerting/maintenance-windows", {
        "name": "nightly batch", "matchers": {"metric": "batch:*"},
        "days": [0, 1, 2, 3, 4, 5, 6], "start": f"{now.tm_hour:02d}:{now.tm_min:02d}",
        "duration_s": 3600,
    }, s.owner.auth)  # fmt: skip
    assert window["active"]
    await publish_anomaly(s.nc, "acme", "batch:rows", 1)
    await publish_anomaly(s.nc, "acme", "api:errors", 2)

    def api_told() -> bool:
        return ("api:errors", "opened") in kinds(s.web.accepted)

    await eventually(api_told, timeout=5)
    await asyncio.sleep(0.5)
    held = await s.incident_of("batch:rows")
    assert held["suppressed"] == f"maintenance window {window['id']}"
    assert kinds(s.web.accepted) == [("api:errors", "opened")]
    # The window ends (here: removed) and the incident is notified.
    r = await s.client.delete(
        f"/v1/alerting/maintenance-windows/{window['id']}", headers=s.owner.auth
    )
    assert r.status_code == 204

    def released() -> bool:
        return ("batch:rows", "opened") in kinds(s.web.accepted)

    await eventually(released, timeout=5)


async def test_inhibition_mutes_dependents_while_the_source_is_open(setup: Setup) -> None:
    s = setup
    hook, _ = await webhook(s.client, s.owner.auth, f"{s.web.url}/hook")
    await put(s.client, "/v1/alerting/routes", {
        "route": {"channels": [hook], "group_wait_s": 0, "resolve_after_s": 60},
    }, s.owner.auth)  # fmt: skip
    await post(s.client, "/v1/alerting/inhibitions", {
        "source": {"metric": "*:health"}, "target": {"metric": "*"}, "equal": ["namespace"],
    }, s.owner.auth)  # fmt: skip
    await publish_anomaly(s.nc, "acme", "svc:health", 1)
    source = await s.incident_of("svc:health")
    await publish_anomaly(s.nc, "acme", "svc:latency", 2)
    await publish_anomaly(s.nc, "acme", "web:latency", 3)

    def others_told() -> bool:
        return ("web:latency", "opened") in kinds(s.web.accepted)

    await eventually(others_told, timeout=5)
    await asyncio.sleep(0.5)
    assert sorted(kinds(s.web.accepted)) == [("svc:health", "opened"), ("web:latency", "opened")]
    muted = await s.incident_of("svc:latency")
    assert str(muted["suppressed"]).startswith(f"inhibited by incident {source['id']}")
    # The source resolves: what it inhibited is notified.
    r = await s.client.post(f"/v1/alerting/incidents/{source['id']}/resolve", headers=s.owner.auth)
    assert r.status_code == 200 and r.json()["status"] == "resolved"

    def released() -> bool:
        return ("svc:latency", "opened") in kinds(s.web.accepted)

    await eventually(released, timeout=5)


async def test_flapping_stream_becomes_one_held_incident(setup: Setup) -> None:
    s = setup
    hook, _ = await webhook(s.client, s.owner.auth, f"{s.web.url}/hook")
    await put(s.client, "/v1/alerting/routes", {
        "route": {"channels": [hook], "group_wait_s": 0, "resolve_after_s": 0.4,
                  "flap_window_s": 60, "flap_threshold": 3},
    }, s.owner.auth)  # fmt: skip
    for seq in range(1, 7):
        await publish_anomaly(s.nc, "acme", "queue:depth", seq)
        await asyncio.sleep(0.9)  # longer than resolve_after: without flap control, a page each
    await asyncio.sleep(0.3)
    assert [k for _, k in kinds(s.web.accepted)] == [
        "opened", "resolved", "reopened", "resolved", "flapping",
    ]  # fmt: skip
    incidents = await s.incidents()
    assert len(incidents) == 1
    held = incidents[0]
    assert held["status"] == "open" and held["flapping"] and held["occurrence"] == 1
    assert held["anomaly_count"] == 6


async def test_time_window_correlation_joins_metrics_into_one_incident(setup: Setup) -> None:
    s = setup
    hook, _ = await webhook(s.client, s.owner.auth, f"{s.web.url}/hook")
    await put(s.client, "/v1/alerting/routes", {
        "route": {"channels": [hook], "group_wait_s": 1.5, "resolve_after_s": 60, "routes": [
            {"match": {"metric": "shop:*"}, "correlate_s": 30}]},
    }, s.owner.auth)  # fmt: skip
    for seq, metric in enumerate(["shop:checkout", "shop:cart", "other:x", "shop:search"]):
        await publish_anomaly(s.nc, "acme", metric, seq)
        await asyncio.sleep(0.2)

    def notified() -> bool:
        return len(s.web.accepted) == 2

    await eventually(notified, timeout=5)
    await asyncio.sleep(0.5)
    incidents = await s.incidents()
    by_first = {str(i["metrics"][0]): i for i in incidents}  # type: ignore[index]
    assert set(by_first) == {"shop:checkout", "other:x"}
    assert by_first["shop:checkout"]["metrics"] == ["shop:checkout", "shop:cart", "shop:search"]
    opened = [r.json() for r in s.web.accepted]
    assert sorted(o["incident"]["anomaly_count"] for o in opened) == [1, 3]
