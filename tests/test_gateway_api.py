"""Ingest validation, body limits, rate limits, health, metrics, OpenAPI, tracing and the
control-plane watch surviving a nats-server restart, all through the real HTTP server."""

import asyncio
import json
import time

import httpx
import msgspec
from nats.aio.client import Client

from driftlock.bus.server import ManagedNatsServer
from driftlock.gateway.control import TenantRecord
from driftlock.gateway.server import GatewayServer
from driftlock.wire.payload import MSGPACK, decode_points
from tests.conftest import eventually
from tests.gateway_helpers import new_tenant

T0 = time.time() - 600


def client_for(gateway: GatewayServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url, timeout=10)


async def test_invalid_points_are_reported_by_path_and_nothing_is_ingested(
    gateway: GatewayServer, nc: Client
) -> None:
    async with client_for(gateway) as client:
        owner = await new_tenant(gateway, client, "acme")
        body = {
            "metrics": [
                {"metric": "ok", "points": [[T0, 1.0]]},
                {"metric": "bad metric!", "points": [[T0, 1.0]]},
                {"metric": "cpu", "points": [[T0, 1.0], [T0, "x"], {"ts": "soon", "value": 2}]},
                {"metric": "mem", "points": [[T0 * 1000, 1.0], [T0], {"value": 10**400}]},
            ]
        }
        r = await client.post("/v1/ingest", content=json.dumps(body), headers=owner.auth)
        assert r.status_code == 422, r.text
        paths = [d["path"] for d in r.json()["error"]["details"]]
        assert paths == ["metrics[1].metric"]  # the envelope is checked first
        del body["metrics"][1]
        r = await client.post("/v1/ingest", json=body, headers=owner.auth)
        assert r.status_code == 422
        details = {d["path"]: d["message"] for d in r.json()["error"]["details"]}
        assert details == {
            "metrics[1].points[1][1]": "not a number",
            "metrics[1].points[2].ts": "not an RFC 3339 timestamp",
            "metrics[2].points[0][0]": "timestamp out of range (milliseconds? ts is in seconds)",
            "metrics[2].points[1]": 'expected [ts, value] or {"ts": …, "value": …}',
            "metrics[2].points[2].value": "not a finite number",
        }
        info = await nc.jetstream().stream_info("DL_EVENTS")
        assert info.state.messages == 0  # all or nothing

        for raw, code in ((b"{not json", 400), (b"", 400), (b"[1, 2]", 422)):
            r = await client.post("/v1/ingest", content=raw, headers=owner.auth)
            assert r.status_code == code, (raw, r.text)
            assert set(r.json()["error"]) == {"code", "message", "details"}
        r = await client.post(
            "/v1/ingest", content=b"a,b", headers={**owner.auth, "Content-Type": "text/csv"}
        )
        assert r.status_code == 415


async def test_ndjson_and_msgpack_bodies(gateway: GatewayServer, nc: Client) -> None:
    async with client_for(gateway) as client:
        owner = await new_tenant(gateway, client, "acme")
        lines = [
            {"metric": "cpu", "ts": T0, "value": 1.0},
            {"metric": "cpu", "value": 2.0},
            {"metric": "mem", "points": [[T0, 3.0], [T0 + 1, 4.0]]},
        ]
        ndjson = "\n".join(json.dumps(line) for line in lines).encode()
        r = await client.post(
            "/v1/ingest",
            content=ndjson,
            headers={**owner.auth, "Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 202 and r.json() == {"accepted": 4, "metrics": 2}
        packed = msgspec.msgpack.encode({"metrics": [{"metric": "disk", "points": [[T0, 5.0]]}]})
        r = await client.post(
            "/v1/ingest",
            content=packed,
            headers={**owner.auth, "Content-Type": "application/msgpack"},
        )
        assert r.status_code == 202 and r.json() == {"accepted": 1, "metrics": 1}
        r = await client.post(
            "/v1/ingest",
            content=b'{"metric": "cpu", "value": 1}\n{oops\n',
            headers={**owner.auth, "Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 422 and r.json()["error"]["details"][0]["path"] == "line[1]"
        # What was published carries the request's trace context in its NATS headers.
        msg = await nc.jetstream().get_last_msg("DL_EVENTS", "dl.p.*.acme.disk")
        assert msg.headers is not None and msg.headers["traceparent"].startswith("00-")
        assert msg.headers["Content-Type"] == "application/msgpack"
        # As the node reads it: the columnar batch, a metric's parts joined in order.
        parts = [{"metric": "net", "points": [[T0, 1.5], [T0 + 1, 2.5]]},
                 {"metric": "net", "points": [[T0 + 2, 3.5]]}]  # fmt: skip
        r = await client.post("/v1/ingest", json={"metrics": parts}, headers=owner.auth)
        assert r.status_code == 202 and r.json() == {"accepted": 3, "metrics": 1}
        msg = await nc.jetstream().get_last_msg("DL_EVENTS", "dl.p.*.acme.net")
        assert msg.data is not None
        decoded = decode_points(msg.data, MSGPACK, now=time.time(), max_points=10)
        assert decoded.ts.tolist() == [T0, T0 + 1, T0 + 2] and not decoded.errors
        assert decoded.values.tolist() == [1.5, 2.5, 3.5]


async def test_body_size_limit_is_413(gateway: GatewayServer) -> None:
    async with client_for(gateway) as client:
        owner = await new_tenant(gateway, client, "acme")
        limit = gateway.app.settings.max_body_bytes
        r = await client.post("/v1/ingest", content=b" " * (limit + 1), headers=owner.auth)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

        async def chunks() -> object:
            for _ in range(limit // 65536 + 2):
                yield b" " * 65536

        r = await client.post("/v1/ingest", content=chunks(), headers=owner.auth)  # type: ignore[arg-type]
        assert r.status_code == 413


async def test_rate_limits_answer_429_with_retry_after(gateway: GatewayServer) -> None:
    async with client_for(gateway) as client:
        owner = await new_tenant(gateway, client, "acme")
        gw = gateway.app.gateway
        assert gw is not None
        await gw.control.tenants.put("acme", TenantRecord(id="acme", name="acme", plan="free"))
        statuses = [(await client.get("/v1/me", headers=owner.auth)).status_code for _ in range(15)]
        assert statuses[:10] == [200] * 10 and 429 in statuses
        r = await client.get("/v1/me", headers=owner.auth)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "rate_limited"
        metrics = (await client.get("/metrics")).text
        assert "driftlock_gateway_rate_limited_total" in metrics
        # Another tenant is not affected.
        other = await new_tenant(gateway, client, "globex")
        assert (await client.get("/v1/me", headers=other.auth)).status_code == 200


async def test_health_readiness_metrics_and_openapi(gateway: GatewayServer) -> None:
    async with client_for(gateway) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"] == {"nats": True, "buckets": True}
        owner = await new_tenant(gateway, client, "acme")
        await client.get("/v1/me", headers=owner.auth)
        await client.get("/v1/me")
        metrics = (await client.get("/metrics")).text
        assert (
            'driftlock_gateway_requests_total{method="GET",route="/v1/me",status="200"}' in metrics
        )
        assert "driftlock_gateway_request_seconds_bucket" in metrics
        assert "driftlock_gateway_auth_failures_total 1.0" in metrics
        assert 'driftlock_gateway_tenant_requests_total{tenant="acme"}' in metrics
        document = (await client.get("/openapi.json")).json()
        assert document["openapi"].startswith("3.")
        ingest = document["paths"]["/v1/ingest"]["post"]
        schema_ref = ingest["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert schema_ref.endswith("/IngestRequest")
        assert "IngestRequest" in document["components"]["schemas"]
        r = await client.get("/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_control_plane_changes_are_seen_after_a_nats_server_restart(
    gateway: GatewayServer, nats_server: ManagedNatsServer
) -> None:
    gw = gateway.app.gateway
    assert gw is not None
    nats_server.kill()
    await nats_server.start()  # same port and store
    await eventually(lambda: gw.nc.is_connected, timeout=15)
    # Another gateway (here: a plain client) creates a tenant after the restart.
    import nats

    other = await nats.connect(nats_server.url)
    kv = await other.jetstream().key_value("dl_tenants")
    await kv.put("late", msgspec.json.encode(TenantRecord(id="late", name="late")))
    await other.close()
    await eventually(lambda: gw.control.tenants.get("late") is not None, timeout=15)
    async with client_for(gateway) as client:
        r = await client.get("/readyz")
        assert r.status_code == 200
    await asyncio.sleep(0)
