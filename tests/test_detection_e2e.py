"""Detection settings end to end: PUT them through the gateway, publish points to NATS, and
see the node apply them: a custom rule's `kind: rule` anomaly on `dl.anomaly.>` and in the
query, and a spike that a low sensitivity no longer flags. Also: who may read and write, and
422 with field paths."""

import asyncio
import json
import time
from typing import Any

import httpx
import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg

from driftlock.actors.node import Node
from driftlock.gateway.server import GatewayServer
from tests.conftest import eventually
from tests.gateway_helpers import login, new_tenant

DAY = 86_400.0
# A midnight two days ago: the points lie in the accepted range, and the stream looks to the
# seasonal profile as it does in tests/test_detect_rules.py.
T0 = (time.time() // DAY - 2) * DAY


def borderline() -> list[list[float]]:
    values = np.random.default_rng(7).normal(100.0, 1.0, 2000)
    values[1900] = 105.2
    return [[T0 + 60.0 * i, float(v)] for i, v in enumerate(values)]


async def applied(client: httpx.AsyncClient, auth: dict[str, str], metric: str, n: int) -> None:
    """Wait until the stream's actor has applied n points."""
    for _ in range(500):
        r = await client.get(f"/v1/metrics/{metric}", headers=auth)
        if r.status_code == 200 and r.json()["points"] == n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{metric} never reached {n} points")


async def test_rules_and_sensitivity_reach_the_actors(
    gateway: GatewayServer, nc: Client, node: Node
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        owner = await new_tenant(gateway, client, "acme")
        r = await client.get("/v1/detection", headers=owner.auth)
        assert r.status_code == 200, r.text
        assert r.json() == {"sensitivity": 0.5, "overrides": [], "rules": []}
        settings = {
            "sensitivity": 0.5,
            "overrides": [{"pattern": "quiet-*", "sensitivity": 0.0}],
            "rules": [{"metric": "temp*", "name": "hot", "above": 50.0}],
        }
        r = await client.put("/v1/detection", json=settings, headers=owner.auth)
        assert r.status_code == 200, r.text
        assert r.json()["rules"][0]["above"] == 50.0 and r.json()["rules"][0]["below"] is None
        assert (await client.get("/v1/detection", headers=owner.auth)).json() == r.json()

        tuning = node._tuning
        assert tuning is not None

        def node_has_the_settings() -> bool:
            return tuning.for_stream("acme", "quiet-lat").sensitivity == 0.0

        await eventually(node_has_the_settings)

        seen: list[dict[str, Any]] = []

        async def collect(msg: Msg) -> None:
            seen.append(json.loads(msg.data))

        await nc.subscribe("dl.anomaly.acme.>", cb=collect)
        temps = [[T0 + 60.0 * i, 40.0] for i in range(10)] + [[T0 + 600.0, 60.0]]
        await nc.publish("dl.in.acme.temperature", json.dumps(temps).encode())
        for metric in ("loud-lat", "quiet-lat"):
            await nc.publish(f"dl.in.acme.{metric}", json.dumps(borderline()).encode())

        def all_applied() -> bool:
            return {a["metric"] for a in seen} >= {"temperature", "loud-lat"}

        await eventually(all_applied)
        for metric, points in (("quiet-lat", 2000), ("loud-lat", 2000), ("temperature", 11)):
            await applied(client, owner.auth, metric, points)
        rule = next(a for a in seen if a["metric"] == "temperature")
        assert rule["kind"] == "rule" and rule["detectors"] == ["rule:hot"]
        assert rule["value"] == 60.0 and rule["expected"] == [50.0, 50.0]
        assert rule["id"].endswith(".rule0")
        assert [a["ts"] for a in seen if a["metric"] == "loud-lat"] == [T0 + 60.0 * 1900]
        # The same spike at sensitivity 0 (by the quiet-* override) is not flagged.
        assert [a for a in seen if a["metric"] == "quiet-lat"] == []

        r = await client.get("/v1/anomalies", params={"kind": "rule"}, headers=owner.auth)
        assert r.status_code == 200, r.text
        assert [a["id"] for a in r.json()["anomalies"]] == [rule["id"]]


async def test_who_may_read_and_write_and_field_paths(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        owner = await new_tenant(gateway, client, "acme")
        viewer = {"email": "v@acme.example", "password": "correct horse battery", "role": "viewer"}
        r = await client.post("/v1/users", json=viewer, headers=owner.auth)
        assert r.status_code == 201, r.text
        token = await login(client, viewer["email"], viewer["password"])
        as_viewer = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/v1/detection", headers=as_viewer)).status_code == 200
        r = await client.put("/v1/detection", json={"sensitivity": 0.9}, headers=as_viewer)
        assert r.status_code == 403

        bad: dict[str, Any] = {
            "sensitivity": 2,
            "overrides": [{"pattern": "a b", "sensitivity": 0.5}],
            "rules": [{"metric": "cpu"}, {"above": 1, "below": 5}, {"above": "hot"}],
        }
        r = await client.put("/v1/detection", json=bad, headers=owner.auth)
        assert r.status_code == 422, r.text
        paths = {d["path"] for d in r.json()["error"]["details"]}
        assert paths == {"sensitivity", "rules[2].above"}  # types first, as one document
        bad["sensitivity"] = 1
        bad["rules"] = bad["rules"][:2]
        r = await client.put("/v1/detection", json=bad, headers=owner.auth)
        assert r.status_code == 422, r.text
        details = r.json()["error"]["details"]
        assert {d["path"] for d in details} == {
            "overrides[0].pattern",
            "rules[0]",
            "rules[1].below",
        }
        # Nothing was stored.
        r = await client.get("/v1/detection", headers=owner.auth)
        assert r.json()["sensitivity"] == 0.5
