"""The alerting routes of the gateway: precise 422s for bad configuration, the role table,
tenant isolation, the test send and channel health, dead letters after the last retry, the
rate cap, and label rules that correlate several metrics into one incident."""

import asyncio
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.smtp import AuthResult
from nats.aio.client import Client

from driftlock.alerting.senders import signature
from driftlock.bus.server import ManagedNatsServer
from driftlock.gateway.roles import Role
from driftlock.gateway.server import GatewayServer
from tests.alerting_helpers import (
    alerter_config,
    http_receiver,
    kinds,
    post,
    publish_anomaly,
    put,
    running_alerter,
    smtp_server,
    verify_signature,
    webhook,
)
from tests.conftest import eventually
from tests.gateway_helpers import new_tenant
from tests.test_gateway_auth import accounts_by_role


def errors(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 422, r.text
    return {d["path"]: d["message"] for d in r.json()["error"]["details"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_bad_configuration_is_refused_with_the_field(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        owner = await new_tenant(gateway, client, "acme")
        bad: list[tuple[dict[str, Any], str, str]] = [
            ({"type": "webhook", "url": "ftp://example.com/x"}, "config.url", "http"),
            ({"type": "webhook", "url": "http://"}, "config.url", "host"),
            ({"type": "slack", "webhook_url": "https://hooks.example/x",
              "template": "{% if %}"}, "config.template", "line 1"),
            ({"type": "email", "host": "smtp.example", "from_addr": "a@b.example",
              "to": ["not-an-address"]}, "config.to[0]", "pattern"),
            ({"type": "email", "host": "bad host!", "from_addr": "a@b.example",
              "to": ["x@y.example"], "body_template": "{{ incident.id "}, "config.host",
             "pattern"),
            ({"type": "webhook", "url": "https://x.example", "secret": "short"},
             "config.secret", "16"),
        ]  # fmt: skip
        for config, path, words in bad:
            r = await client.post(
                "/v1/alerting/channels", json={"name": "x", "config": config}, headers=owner.auth
            )
            found = errors(r)
            assert path in found and words in found[path], (path, found)
        r = await client.post("/v1/alerting/channels", json={"name": "x"}, headers=owner.auth)
        assert "config" in errors(r)
        # References must exist: a route or policy naming an unknown channel is refused.
        r = await client.put("/v1/alerting/routes", json={
            "route": {"routes": [{"channels": ["nope"]}], "policy": "nope"},
        }, headers=owner.auth)  # fmt: skip
        assert errors(r) == {
            "route.routes[0].channels[0]": "no such channel",
            "route.policy": "no such escalation policy",
        }
        r = await client.post("/v1/alerting/maintenance-windows", json={
            "name": "w", "days": [7], "start": "25:00", "duration_s": 10, "timezone": "Mars/Base",
        }, headers=owner.auth)  # fmt: skip
        assert set(errors(r)) == {"days", "start", "duration_s", "timezone"}
        r = await client.post("/v1/alerting/silences", json={
            "matchers": {"metric": "a b"}, "duration_s": 10,
        }, headers=owner.auth)  # fmt: skip
        assert set(errors(r)) == {"matchers.metric"}
        r = await client.post("/v1/alerting/silences", json={
            "matchers": {"metric": "a"}, "duration_s": 10, "ends_at": 2e9,
        }, headers=owner.auth)  # fmt: skip
        assert "exactly one of ends_at and duration_s" in errors(r)["(root)"]


async def test_roles_and_tenants(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        headers = await accounts_by_role(gateway, client, "acme")
        channel = {"name": "x", "config": {"type": "webhook", "url": "http://127.0.0.1:9/x"}}
        for role, allowed in [(Role.VIEWER, False), (Role.INGEST, False), (Role.EDITOR, True),
                              (Role.ADMIN, True)]:  # fmt: skip
            r = await client.post("/v1/alerting/channels", json=channel, headers=headers[role])
            assert (r.status_code == 201) == allowed, (role, r.text)
        r = await client.get("/v1/alerting/channels", headers=headers[Role.VIEWER])
        assert r.status_code == 200 and len(r.json()["channels"]) == 2
        assert r.json()["channels"][0]["config"]["secret"] == "********"
        assert (
            await client.get("/v1/alerting/channels", headers=headers[Role.INGEST])
        ).status_code == 403
        other = await new_tenant(gateway, client, "globex")
        mine = r.json()["channels"][0]["id"]
        assert (
            await client.get(f"/v1/alerting/channels/{mine}", headers=other.auth)
        ).status_code == 404
        r = await client.delete(f"/v1/alerting/channels/{mine}", headers=other.auth)
        assert r.status_code == 404
        assert (await client.get("/v1/alerting/channels", headers=other.auth)).json() == {
            "channels": []
        }
        # Acknowledging is for editors and up; the permission is checked before the lookup.
        ack = "/v1/alerting/incidents/0123456789abcdef0123/ack"
        assert (await client.post(ack, headers=headers[Role.VIEWER])).status_code == 403
        assert (await client.post(ack, headers=headers[Role.EDITOR])).status_code == 404


async def test_test_send_and_channel_health(gateway: GatewayServer) -> None:
    with smtp_server() as smtp:
        async with (
            http_receiver() as web,
            httpx.AsyncClient(base_url=gateway.url, timeout=15) as client,
        ):
            owner = await new_tenant(gateway, client, "acme")
            hook, secret = await webhook(client, owner.auth, f"{web.url}/hook")
            r = await client.post(f"/v1/alerting/channels/{hook}/test", headers=owner.auth)
            assert r.json() == {"delivered": True, "error": None}
            verify_signature(web.accepted[0], secret)
            assert web.accepted[0].json()["incident"]["metrics"] == ["sample:latency"]
            # Alertmanager's webhook format, for receivers written for it.
            am = await post(client, "/v1/alerting/channels", {"name": "am", "config": {
                "type": "webhook", "url": f"{web.url}/am", "format": "alertmanager",
                "template": "{{ incident.metrics[0] }} is odd"}}, owner.auth)  # fmt: skip
            r = await client.post(f"/v1/alerting/channels/{am['id']}/test", headers=owner.auth)
            assert r.json()["delivered"]
            body = web.on("/am")[0].json()
            assert body["version"] == "4" and body["status"] == "firing"
            assert body["receiver"] == "am" and body["groupLabels"] == {"metric": "sample:latency"}
            [alert] = body["alerts"]
            assert alert["labels"]["alertname"] == "DriftLockAnomaly"
            assert alert["labels"]["metric"] == "sample:latency"
            assert alert["annotations"]["summary"] == "sample:latency is odd"
            assert alert["endsAt"] == "0001-01-01T00:00:00Z"
            verify_signature(web.on("/am")[0], am["secret"])
            mail = await post(client, "/v1/alerting/channels", {"name": "mail", "config": {
                "type": "email", "host": "127.0.0.1", "port": smtp.port, "starttls": False,
                "from_addr": "d@acme.example", "to": ["o@acme.example"]}}, owner.auth)  # fmt: skip
            r = await client.post(f"/v1/alerting/channels/{mail['id']}/test", headers=owner.auth)
            assert r.json()["delivered"] and len(smtp.messages) == 1
            dead = await post(client, "/v1/alerting/channels", {"name": "nowhere", "config": {
                "type": "email", "host": "127.0.0.1", "port": free_port(), "starttls": False,
                "from_addr": "d@acme.example", "to": ["o@acme.example"]}}, owner.auth)  # fmt: skip
            r = await client.post(f"/v1/alerting/channels/{dead['id']}/test", headers=owner.auth)
            assert r.status_code == 200
            assert not r.json()["delivered"] and "smtp 127.0.0.1" in r.json()["error"]
            health = (
                await client.get(f"/v1/alerting/channels/{dead['id']}", headers=owner.auth)
            ).json()["health"]
            assert health["state"] == "failing" and "smtp" in health["last_error"]
            ok = (await client.get(f"/v1/alerting/channels/{hook}", headers=owner.auth)).json()
            assert ok["health"]["state"] == "ok"


async def test_retries_end_in_a_dead_letter_and_failing_health(
    gateway: GatewayServer, nc: Client, nats_server: ManagedNatsServer
) -> None:
    async with (
        http_receiver(status=503) as web,
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
        running_alerter(alerter_config(nats_server.url, gateway.url)),
    ):
        owner = await new_tenant(gateway, client, "acme")
        hook, _ = await webhook(client, owner.auth, f"{web.url}/hook")
        await put(client, "/v1/alerting/routes", {
            "route": {"channels": [hook], "group_wait_s": 0, "resolve_after_s": 60},
        }, owner.auth)  # fmt: skip
        await publish_anomaly(nc, "acme", "cpu", 1)

        async def dead_letters() -> list[dict[str, Any]]:
            r = await client.get("/v1/alerting/dead-letters", headers=owner.auth)
            found: list[dict[str, Any]] = r.json()["dead_letters"]
            return found

        for _ in range(100):
            if await dead_letters():
                break
            await asyncio.sleep(0.05)
        [letter] = await dead_letters()
        assert letter["reason"] == "retries_exhausted" and letter["attempts"] == 3
        assert "HTTP 503" in letter["error"] and letter["channel"] == hook
        assert len(web.received) == 3  # alerter_config: three attempts
        channel = (await client.get(f"/v1/alerting/channels/{hook}", headers=owner.auth)).json()
        assert channel["health"]["state"] == "failing"
        assert channel["health"]["consecutive_failures"] == 3
        [incident] = (await client.get("/v1/alerting/incidents", headers=owner.auth)).json()[
            "incidents"
        ]
        assert incident["notifications"][0]["delivered"] == [hook]  # settled, not retried forever


async def test_rate_cap_and_label_rules_grouping_metrics(
    gateway: GatewayServer, nc: Client, nats_server: ManagedNatsServer
) -> None:
    async with (
        http_receiver() as web,
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
        running_alerter(alerter_config(nats_server.url, gateway.url)),
    ):
        owner = await new_tenant(gateway, client, "acme")
        capped = await post(client, "/v1/alerting/channels", {
            "name": "capped", "max_per_hour": 2,
            "config": {"type": "webhook", "url": f"{web.url}/capped"},
        }, owner.auth)  # fmt: skip
        await put(client, "/v1/alerting/routes", {
            "labels": [{"metric": "db:*", "labels": {"service": "database"}},
                       {"metric": "api:*", "labels": {"service": "api"}}],
            "route": {"channels": [capped["id"]], "group_by": ["service"], "group_wait_s": 0.3,
                      "resolve_after_s": 60},
        }, owner.auth)  # fmt: skip
        # Three metrics of the database close in time: one incident.
        for seq, metric in enumerate(["db:latency", "db:connections", "db:locks"]):
            await publish_anomaly(nc, "acme", metric, seq)
        for seq, metric in enumerate(["api:errors", "api:latency", "api:5xx"], start=10):
            await publish_anomaly(nc, "acme", metric, seq)
            await asyncio.sleep(0.4)  # past group_wait: updates, over the cap

        def settled() -> bool:
            return len(web.accepted) == 2

        await eventually(settled, timeout=10)
        incidents = (await client.get("/v1/alerting/incidents", headers=owner.auth)).json()[
            "incidents"
        ]
        by_service = {i["group"]["service"]: i for i in incidents}
        assert set(by_service) == {"database", "api"}
        assert sorted(by_service["database"]["metrics"]) == [
            "db:connections", "db:latency", "db:locks",
        ]  # fmt: skip
        assert by_service["database"]["labels"]["service"] == "database"
        assert "metric" not in by_service["database"]["labels"]  # not common to all three
        assert sorted(k for _, k in kinds(web.accepted)) == ["opened", "opened"]
        r = await client.get("/v1/alerting/routes", headers=owner.auth)
        assert r.json()["configured"] and r.json()["labels"][0]["labels"] == {"service": "database"}


async def test_readme_alerting_example_is_accepted(gateway: GatewayServer) -> None:
    """The README's curl bodies, posted in order; placeholders take the ids just created."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(r"<!-- example: alerting -->\n```sh\n(.*?)```", text, re.S)
    assert block is not None
    ids: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        owner = await new_tenant(gateway, client, "acme")
        for line in block.group(1).strip().splitlines():
            call = re.fullmatch(r"curl -s (-X (\w+) )?localhost:8321(\S+) .* -d '(.*)'", line)
            assert call is not None, line
            body = call.group(4)
            for placeholder, value in ids.items():
                body = body.replace(f"<{placeholder}>", value)
            r = await client.request(
                call.group(2) or "POST", call.group(3), content=body, headers=owner.auth
            )
            assert r.status_code in (200, 201), (line, r.text)
            name = json.loads(body).get("name", "")
            if "hook" in name:
                ids["hook channel id"] = r.json()["id"]
            elif "slack" in name:
                ids["slack channel id"] = r.json()["id"]
            elif call.group(3).endswith("/policies"):
                ids["policy id"] = r.json()["id"]
        routes = (await client.get("/v1/alerting/routes", headers=owner.auth)).json()
        assert routes["route"]["routes"][0]["policy"] == ids["policy id"]


def _only_alerts(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = auth_data.login == b"alerts" and auth_data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_smtp_login_and_a_refused_one(gateway: GatewayServer) -> None:
    """SMTP AUTH against a server that requires it (over plain TCP here: no certificates in
    the test; STARTTLS uses the same client path with `starttls: true`)."""
    with smtp_server(
        authenticator=_only_alerts, auth_required=True, auth_require_tls=False
    ) as smtp:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as client:
            owner = await new_tenant(gateway, client, "acme")
            base = {"type": "email", "host": "127.0.0.1", "port": smtp.port, "starttls": False,
                    "from_addr": "d@acme.example", "to": ["o@acme.example"],
                    "username": "alerts"}  # fmt: skip
            good = await post(client, "/v1/alerting/channels", {
                "name": "ok", "config": {**base, "password": "s3cret"}}, owner.auth)  # fmt: skip
            bad = await post(client, "/v1/alerting/channels", {
                "name": "bad", "config": {**base, "password": "wrong"}}, owner.auth)  # fmt: skip
            assert good["config"]["password"] == "********"
            r = await client.post(f"/v1/alerting/channels/{good['id']}/test", headers=owner.auth)
            assert r.json() == {"delivered": True, "error": None}
            assert len(smtp.messages) == 1
            r = await client.post(f"/v1/alerting/channels/{bad['id']}/test", headers=owner.auth)
            assert not r.json()["delivered"] and "login refused" in r.json()["error"]
            assert len(smtp.messages) == 1


async def test_readme_webhook_verification_accepts_real_calls_only(
    gateway: GatewayServer,
) -> None:
    text = (Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(r"<!-- example: verify-webhook -->\n```python\n(.*?)```", text, re.S)
    assert block is not None
    namespace: dict[str, Any] = {}
    exec(block.group(1), namespace)
    verify = namespace["verify"]
    async with (
        http_receiver() as web,
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
    ):
        owner = await new_tenant(gateway, client, "acme")
        hook, secret = await webhook(client, owner.auth, f"{web.url}/hook")
        r = await client.post(f"/v1/alerting/channels/{hook}/test", headers=owner.auth)
        assert r.json()["delivered"]
        call = web.accepted[0]
        headers = {
            "X-DriftLock-Timestamp": call.headers["x-driftlock-timestamp"],
            "X-DriftLock-Signature": call.headers["x-driftlock-signature"],
        }
        assert verify(secret, headers, call.body)
        assert not verify(secret, headers, call.body + b" ")
        assert not verify("another-secret-of-16+", headers, call.body)
        # A genuine call replayed ten minutes later is refused for its age alone.
        old = str(int(time.time()) - 600)
        stale = {"X-DriftLock-Timestamp": old,
                 "X-DriftLock-Signature": signature(secret, old, call.body)}  # fmt: skip
        assert not verify(secret, stale, call.body)
