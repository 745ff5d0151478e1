"""Schema-driven fuzzing of every route in /openapi.json through the real HTTP server:
random bodies shaped by each operation's schema (and plain garbage), random query
parameters. Nothing may answer 5xx, leak a traceback, break the error shape, or show
another tenant's data."""

import asyncio
import json
import string
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftlock.gateway.server import GatewayServer
from tests.gateway_helpers import new_tenant

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(string.printable, max_size=20)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def resolve(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return resolved


def shaped(
    schema: dict[str, Any], document: dict[str, Any], depth: int = 0
) -> st.SearchStrategy[Any]:
    """Values that follow the schema's structure loosely: the right keys, mixed values."""
    schema = resolve(schema, document)
    if depth > 3:
        return JSON_SCALARS
    if "anyOf" in schema:
        return st.one_of([shaped(s, document, depth + 1) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return st.fixed_dictionaries(
            {},
            optional={k: shaped(v, document, depth + 1) | JSON_SCALARS for k, v in props.items()},
        )
    if kind == "array":
        items = schema.get("items") or (schema.get("prefixItems") or [{}])[0]
        return st.lists(shaped(items, document, depth + 1), max_size=4)
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | JSON_SCALARS
    return JSON_SCALARS


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, ops in document["paths"].items()
        for method, op in ops.items()
        if not path.endswith("/stream")
    ]


def fuzz(url: str, auth: dict[str, str], document: dict[str, Any], foreign: str) -> int:
    checked = 0

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        nonlocal checked
        method, path, op = data.draw(st.sampled_from(operations(document)))
        target = path
        for param in op.get("parameters", []):
            if param["in"] == "path":
                value = data.draw(
                    st.text(string.ascii_letters + string.digits + "-_:%.", min_size=1, max_size=12)
                )
                target = target.replace("{" + param["name"] + "}", value)
        query = {
            p["name"]: str(data.draw(JSON_SCALARS))
            for p in op.get("parameters", [])
            if p["in"] == "query" and data.draw(st.booleans())
        }
        body_schema = (
            op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        )
        body = data.draw(shaped(body_schema, document) if body_schema else JSON)
        with httpx.Client(base_url=url, timeout=10) as client:
            r = client.request(method, target, params=query, content=json.dumps(body), headers=auth)
        assert r.status_code < 500, (method, target, body, r.text)
        assert "Traceback" not in r.text
        assert foreign not in r.text
        if r.status_code >= 400:
            error = r.json()["error"]
            assert set(error) == {"code", "message", "details"}
        checked += 1

    one()
    return checked


async def test_every_route_survives_fuzzing(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        await new_tenant(gateway, client, "hidden-tenant")
        fuzzer = await new_tenant(gateway, client, "fuzzer")
        document = (await client.get("/openapi.json")).json()
    checked = await asyncio.to_thread(fuzz, gateway.url, fuzzer.auth, document, "hidden-tenant")
    assert checked >= 300
