"""Alerting end to end through real parts: a node detects a spike ingested over NATS, the
alerter groups it into an incident and notifies a real SMTP server and a real HTTP server
(Slack format and a signed webhook) exactly once per channel; the signed link in the
notification acknowledges it; after the quiet period it resolves, once, everywhere."""

import asyncio
import dataclasses
import re
from email.message import Message

import httpx
from nats.aio.client import Client

from driftlock.bus.server import ManagedNatsServer
from driftlock.gateway.server import GatewayServer
from tests.alerting_helpers import (
    alerter_config,
    http_receiver,
    post,
    put,
    running_alerter,
    smtp_server,
    spike,
    verify_signature,
)
from tests.conftest import eventually, scrape
from tests.gateway_helpers import new_tenant


def decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


async def test_spike_notifies_each_channel_once_then_ack_link_and_resolve(
    gateway: GatewayServer, nc: Client, nats_server: ManagedNatsServer
) -> None:
    with smtp_server() as smtp:
        async with (
            http_receiver() as web,
            httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
        ):
            owner = await new_tenant(gateway, client, "acme")
            email = await post(client, "/v1/alerting/channels", {
                "name": "ops mail",
                "config": {"type": "email", "host": "127.0.0.1", "port": smtp.port,
                           "starttls": False, "from_addr": "driftlock@acme.example",
                           "to": ["oncall@acme.example"]},
            }, owner.auth)  # fmt: skip
            slack = await post(client, "/v1/alerting/channels", {
                "name": "slack #ops",
                "config": {"type": "slack", "webhook_url": f"{web.url}/slack",
                           "template": "Custom: {{ incident.metrics | join(',') }} "
                                       "is {{ change.kind }}"},
            }, owner.auth)  # fmt: skip
            hook = await post(client, "/v1/alerting/channels", {
                "name": "pager",
                "config": {"type": "webhook", "url": f"{web.url}/hook"},
            }, owner.auth)  # fmt: skip
            secret = hook["secret"]
            assert secret and len(secret) >= 32
            await put(client, "/v1/alerting/routes", {
                "route": {"channels": [email["id"], slack["id"], hook["id"]],
                          "group_wait_s": 0.2, "resolve_after_s": 2.0},
            }, owner.auth)  # fmt: skip

            config = alerter_config(nats_server.url, gateway.url)
            config = dataclasses.replace(config, metrics_port=0)
            async with running_alerter(config) as alerter:
                await spike(nc, "acme", "latency")

                def notified() -> bool:
                    return len(smtp.messages) >= 1 and len(web.accepted) >= 2

                await eventually(notified, timeout=20)
                await asyncio.sleep(0.5)  # anything duplicated would arrive in this time
                assert len(smtp.messages) == 1 and len(web.on("/slack")) == 1
                assert len(web.on("/hook")) == 1

                mail = smtp.messages[0]
                assert mail["Subject"].startswith("[DriftLock OPENED] acme: latency: 1 anomaly")
                assert mail["To"] == "oncall@acme.example"
                assert mail.get_content_type() == "multipart/alternative"
                plain, html = [p for p in mail.walk() if not p.is_multipart()]
                assert plain.get_content_type() == "text/plain"
                assert html.get_content_type() == "text/html"
                text = decoded(plain)
                assert "latency  spike  value 95" in text
                ack_url = re.search(r"Acknowledge: (\S+)", text)
                assert ack_url is not None
                markup = decoded(html)
                assert f'<a href="{ack_url.group(1)}">Acknowledge</a>' in markup
                assert "<td>latency</td>" in markup

                slack_body = web.on("/slack")[0].json()
                assert slack_body["blocks"][1]["text"]["text"] == "Custom: latency is opened"
                assert slack_body["blocks"][-1]["elements"][0]["url"] == ack_url.group(1)

                call = web.on("/hook")[0]
                verify_signature(call, secret)
                payload = call.json()
                assert payload["change"]["kind"] == "opened"
                assert payload["incident"]["status"] == "open"
                assert payload["anomalies"][0]["metric"] == "latency"
                assert payload["anomalies"][0]["value"] == 95.0
                assert call.headers["x-driftlock-notification-id"] == payload["notification_id"]

                incidents = (await client.get("/v1/alerting/incidents", headers=owner.auth)).json()[
                    "incidents"
                ]
                assert len(incidents) == 1 and incidents[0]["status"] == "open"

                # The signed link from the e-mail acknowledges without credentials.
                r = await client.get(ack_url.group(1))
                assert r.status_code == 200, r.text
                assert r.json()["status"] == "acknowledged"
                r = await client.get(ack_url.group(1).replace("token=", "token=x"))
                assert r.status_code == 403

                def acked_everywhere() -> bool:
                    return len(smtp.messages) == 2 and len(web.accepted) == 4

                await eventually(acked_everywhere, timeout=10)
                kinds = [r.json()["change"]["kind"] for r in web.on("/hook")]
                assert kinds == ["opened", "acknowledged"]

                def resolved_everywhere() -> bool:
                    return len(smtp.messages) == 3 and len(web.accepted) == 6

                await eventually(resolved_everywhere, timeout=10)
                assert smtp.messages[2]["Subject"].startswith("[DriftLock RESOLVED]")
                await asyncio.sleep(0.5)
                assert len(smtp.messages) == 3 and len(web.accepted) == 6
                metrics = alerter.metrics.notifications
                assert metrics.labels("webhook", "sent")._value.get() == 3
                assert metrics.labels("email", "sent")._value.get() == 3
                page = scrape(alerter.metrics_port)
                assert (
                    'driftlock_alert_notifications_total{channel_type="slack",outcome="sent"} 3.0'
                    in page
                )
                assert 'driftlock_alert_incidents{status="resolved"} 1.0' in page
                assert "driftlock_alert_notification_latency_seconds_count 3.0" in page
