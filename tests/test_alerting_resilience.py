"""The alerter across NATS trouble: a nats-server restart (configuration changed after it
is seen, anomalies keep flowing) and a deleted consumer (recreated from the message after
the last one it saw, so nothing stored meanwhile is lost)."""

import dataclasses

import httpx
import nats
from nats.aio.client import Client

from driftlock.alerting.intake import DURABLE
from driftlock.bus.server import ManagedNatsServer
from driftlock.gateway.server import GatewayServer
from tests.alerting_helpers import (
    alerter_config,
    http_receiver,
    kinds,
    publish_anomaly,
    put,
    running_alerter,
    webhook,
)
from tests.conftest import eventually
from tests.gateway_helpers import new_tenant


async def test_alerter_carries_on_after_a_nats_server_restart(
    gateway: GatewayServer, nats_server: ManagedNatsServer
) -> None:
    async with (
        http_receiver() as web,
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
        running_alerter(alerter_config(nats_server.url, gateway.url)) as alerter,
    ):
        owner = await new_tenant(gateway, client, "acme")
        first, _ = await webhook(client, owner.auth, f"{web.url}/first")
        nats_server.kill()
        await nats_server.start()  # same port and store
        gw = gateway.app.gateway
        assert gw is not None
        await eventually(lambda: gw.nc.is_connected, timeout=15)
        # Configuration written after the restart reaches the alerter's watched copy.
        second, _ = await webhook(client, owner.auth, f"{web.url}/second")
        await put(client, "/v1/alerting/routes", {
            "route": {"channels": [first, second], "group_wait_s": 0, "resolve_after_s": 60},
        }, owner.auth)  # fmt: skip
        await eventually(lambda: alerter.store.routing.get("acme") is not None, timeout=15)
        nc = await nats.connect(nats_server.url)
        try:
            await publish_anomaly(nc, "acme", "cpu", 1)
        finally:
            await nc.close()

        def both() -> bool:
            return len(web.accepted) == 2

        await eventually(both, timeout=15)
        assert sorted(r.path for r in web.accepted) == ["/first", "/second"]


async def test_a_deleted_consumer_is_recreated_without_losing_anomalies(
    gateway: GatewayServer, nc: Client, nats_server: ManagedNatsServer
) -> None:
    config = dataclasses.replace(alerter_config(nats_server.url, gateway.url), consumer_check_s=1)
    async with (
        http_receiver() as web,
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
        running_alerter(config),
    ):
        owner = await new_tenant(gateway, client, "acme")
        hook, _ = await webhook(client, owner.auth, f"{web.url}/hook")
        await put(client, "/v1/alerting/routes", {
            "route": {"channels": [hook], "group_wait_s": 0, "resolve_after_s": 60},
        }, owner.auth)  # fmt: skip
        await publish_anomaly(nc, "acme", "before", 1)
        await eventually(lambda: len(web.accepted) == 1, timeout=10)
        await nc.jetstream().delete_consumer("DL_ANOMALIES", DURABLE)
        await publish_anomaly(nc, "acme", "while-gone", 2)  # stored with no consumer at all

        def recovered() -> bool:
            return len(web.accepted) == 2

        await eventually(recovered, timeout=15)
        assert kinds(web.accepted) == [("before", "opened"), ("while-gone", "opened")]


async def test_notifications_continue_the_anomalys_trace(
    gateway: GatewayServer, nc: Client, nats_server: ManagedNatsServer
) -> None:
    trace_id, parent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with (
        http_receiver() as web,
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
        running_alerter(alerter_config(nats_server.url, gateway.url)),
    ):
        owner = await new_tenant(gateway, client, "acme")
        hook, _ = await webhook(client, owner.auth, f"{web.url}/hook")
        await put(client, "/v1/alerting/routes", {
            "route": {"channels": [hook], "group_wait_s": 0, "resolve_after_s": 60},
        }, owner.auth)  # fmt: skip
        traceparent = f"00-{trace_id}-{parent_span}-01"
        await publish_anomaly(nc, "acme", "traced", 1, headers={"traceparent": traceparent})
        await publish_anomaly(nc, "acme", "untraced", 2)
        await eventually(lambda: len(web.accepted) == 2, timeout=10)
        by_metric = {r.json()["incident"]["metrics"][0]: r for r in web.accepted}
        version, trace, span, _ = by_metric["traced"].headers["traceparent"].split("-")
        assert (version, trace) == ("00", trace_id) and span != parent_span
        # Without a trace to continue, the notification starts its own.
        assert trace_id not in by_metric["untraced"].headers["traceparent"]
