"""The gateway end to end, as a client uses it: a real uvicorn server, a real nats-server and
a running node. Log in, create a key, ingest, find the anomaly in the query and the stream."""

import asyncio
import json
import time

import httpx
import numpy as np

from driftlock.gateway.server import GatewayServer
from tests.gateway_helpers import new_tenant

T0 = time.time() - 3600


async def test_login_key_ingest_anomaly_query_and_live_stream(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        owner = await new_tenant(gateway, client, "acme")
        r = await client.post(
            "/v1/api-keys", json={"name": "producer", "role": "ingest"}, headers=owner.auth
        )
        assert r.status_code == 201, r.text
        key = r.json()["key"]
        assert key.startswith("dlk_")
        listed = (await client.get("/v1/api-keys", headers=owner.auth)).json()["api_keys"]
        assert [k["name"] for k in listed] == ["producer"] and "key" not in listed[0]

        # Live stream first, so the anomaly is seen as it happens.
        events: list[dict[str, object]] = []

        async def listen() -> None:
            async with client.stream("GET", "/v1/anomalies/stream", headers=owner.auth) as s:
                assert s.status_code == 200
                async for line in s.aiter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        return

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.3)

        rng = np.random.default_rng(9)
        points = [[T0 + i, float(v)] for i, v in enumerate(20 + rng.normal(0, 1, 500))]
        r = await client.post(
            "/v1/ingest",
            json={"metrics": [{"metric": "latency", "points": points}]},
            headers={"X-API-Key": key},
        )
        assert r.status_code == 202, r.text
        assert r.json() == {"accepted": 500, "metrics": 1}
        r = await client.post(
            "/v1/ingest",
            json={"metrics": [{"metric": "latency", "points": [{"ts": T0 + 500, "value": 45}]}]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 202, r.text

        await asyncio.wait_for(listener, 10)
        assert events[0]["metric"] == "latency" and events[0]["kind"] == "spike"

        r = await client.get("/v1/anomalies", params={"metric": "latency"}, headers=owner.auth)
        assert r.status_code == 200, r.text
        page = r.json()
        assert [a["value"] for a in page["anomalies"]] == [45.0]
        assert page["anomalies"][0]["id"] == events[0]["id"]
        assert page["next_cursor"] is None

        # The anomaly goes out just before its batch commits: give the commit a moment.
        for _ in range(100):
            r = await client.get("/v1/metrics", headers=owner.auth)
            assert r.status_code == 200, r.text
            if r.json()["metrics"] and r.json()["metrics"][0]["points"] == 501:
                break
            await asyncio.sleep(0.02)
        (latency,) = r.json()["metrics"]
        assert latency["metric"] == "latency" and latency["points"] == 501
        assert latency["anomalies"] == 1 and latency["last_value"] == 45.0

        r = await client.get("/v1/metrics/latency", headers=owner.auth)
        assert r.status_code == 200, r.text
        detail = r.json()
        lower, upper = detail["detector"]["expected"]
        assert lower < 20 < upper
        assert detail["recent_values"][-1] == 45.0

        # The ingest key may ingest, not read.
        r = await client.get("/v1/anomalies", headers={"X-API-Key": key})
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "forbidden"
