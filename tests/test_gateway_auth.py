"""Identity and access through the real HTTP server: passwords, tokens, refresh, logout,
API keys, the role table, and tenant isolation on every route of the OpenAPI document."""

import asyncio
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from driftlock.bus.server import ManagedNatsServer
from driftlock.gateway.roles import PERMISSIONS, Permission, Role
from driftlock.gateway.server import GatewayServer
from tests.gateway_helpers import login, new_tenant

T0 = time.time() - 600


def client_for(gateway: GatewayServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url, timeout=10)


async def test_wrong_password_unknown_user_and_bad_tokens_are_401(gateway: GatewayServer) -> None:
    async with client_for(gateway) as client:
        owner = await new_tenant(gateway, client, "acme")
        for body in (
            {"email": owner.email, "password": "wrong"},
            {"email": "nobody@acme.example", "password": "whatever"},
        ):
            r = await client.post("/v1/auth/token", json=body)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        for headers in (
            {},
            {"Authorization": "Bearer not-a-jwt"},
            {"Authorization": "Basic abc"},
            {"X-API-Key": "dlk_0000_nope"},
            {"Authorization": f"Bearer {owner.token[:-3]}xyz"},
        ):
            r = await client.get("/v1/me", headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["WWW-Authenticate"] == "Bearer"
        r = await client.get("/v1/me", headers=owner.auth)
        assert r.json() == {
            "tenant": "acme",
            "role": "owner",
            "kind": "user",
            "subject": r.json()["subject"],
        }


async def test_refresh_rotates_and_logout_revokes(gateway: GatewayServer) -> None:
    async with client_for(gateway) as client:
        owner = await new_tenant(gateway, client, "acme")
        r = await client.post(
            "/v1/auth/token", json={"email": owner.email, "password": owner.password}
        )
        tokens = r.json()
        r = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert r.status_code == 200
        fresh = r.json()
        # A refresh token works once.
        r = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert r.status_code == 401
        auth = {"Authorization": f"Bearer {fresh['access_token']}"}
        assert (await client.get("/v1/me", headers=auth)).status_code == 200
        r = await client.post(
            "/v1/auth/logout", json={"refresh_token": fresh["refresh_token"]}, headers=auth
        )
        assert r.status_code == 204
        assert (await client.get("/v1/me", headers=auth)).status_code == 401
        r = await client.post("/v1/auth/refresh", json={"refresh_token": fresh["refresh_token"]})
        assert r.status_code == 401


async def test_api_keys_expire_and_can_be_revoked(gateway: GatewayServer) -> None:
    async with client_for(gateway) as client:
        owner = await new_tenant(gateway, client, "acme")
        r = await client.post(
            "/v1/api-keys",
            json={"name": "short", "role": "viewer", "expires_in_s": 1},
            headers=owner.auth,
        )
        short = r.json()
        assert (await client.get("/v1/me", headers={"X-API-Key": short["key"]})).status_code == 200
        r = await client.post(
            "/v1/api-keys", json={"name": "long", "role": "viewer"}, headers=owner.auth
        )
        long = r.json()
        await asyncio.sleep(1.1)
        r = await client.get("/v1/me", headers={"X-API-Key": short["key"]})
        assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
        assert (
            await client.delete(f"/v1/api-keys/{long['id']}", headers=owner.auth)
        ).status_code == 204
        r = await client.get("/v1/me", headers={"X-API-Key": long["key"]})
        assert r.status_code == 401


async def accounts_by_role(
    gateway: GatewayServer, client: httpx.AsyncClient, tenant: str
) -> dict[Role, dict[str, str]]:
    owner = await new_tenant(gateway, client, tenant)
    headers: dict[Role, dict[str, str]] = {Role.OWNER: owner.auth}
    for role in (Role.ADMIN, Role.EDITOR, Role.VIEWER):
        email = f"{role.value}@{tenant}.example"
        r = await client.post(
            "/v1/users",
            json={"email": email, "password": "correct horse battery", "role": role.value},
            headers=owner.auth,
        )
        assert r.status_code == 201, r.text
        headers[role] = {
            "Authorization": f"Bearer {await login(client, email, 'correct horse battery')}"
        }
    r = await client.post(
        "/v1/api-keys", json={"name": "ingest", "role": "ingest"}, headers=owner.auth
    )
    headers[Role.INGEST] = {"X-API-Key": r.json()["key"]}
    return headers


def ingest_body() -> dict[str, Any]:
    return {"metrics": [{"metric": "cpu", "points": [[T0, 1.0]]}]}


ACTIONS: list[tuple[Permission, str, str, dict[str, Any] | None]] = [
    (Permission.INGEST, "POST", "/v1/ingest", ingest_body()),
    (Permission.READ, "GET", "/v1/anomalies", None),
    (Permission.READ, "GET", "/v1/metrics", None),
    (Permission.READ, "GET", "/v1/tenant", None),
    (Permission.MANAGE_KEYS, "GET", "/v1/api-keys", None),
    (Permission.MANAGE_USERS, "GET", "/v1/users", None),
    (Permission.SELF, "GET", "/v1/me", None),
    (Permission.VIEW_CLUSTER, "GET", "/v1/cluster", None),
]


async def test_each_role_can_do_exactly_what_its_table_says(gateway: GatewayServer) -> None:
    async with client_for(gateway) as client:
        headers = await accounts_by_role(gateway, client, "acme")
        for role, auth in headers.items():
            for permission, method, path, body in ACTIONS:
                r = await client.request(method, path, json=body, headers=auth)
                allowed = permission in PERMISSIONS[role]
                assert (r.status_code < 400) == allowed, (role, path, r.status_code, r.text)
                if not allowed:
                    assert r.status_code == 403
        # Granting: admins cannot mint owners; editors cannot create keys at all.
        r = await client.post(
            "/v1/users",
            json={"email": "x@acme.example", "password": "correct horse battery", "role": "owner"},
            headers=headers[Role.ADMIN],
        )
        assert r.status_code == 403
        r = await client.post(
            "/v1/api-keys", json={"name": "k", "role": "admin"}, headers=headers[Role.ADMIN]
        )
        assert r.status_code == 201


def concrete(path: str) -> str:
    return path.replace("{metric}", "cpu").replace("{user_id}", "u").replace("{key_id}", "k")


async def test_tenant_b_reaches_nothing_of_tenant_a_on_any_route(gateway: GatewayServer) -> None:
    async with client_for(gateway) as client:
        a = await accounts_by_role(gateway, client, "tenant-a")
        b_owner = await new_tenant(gateway, client, "tenant-b")
        # Tenant A has data and resources of every kind.
        r = await client.post("/v1/ingest", json=ingest_body(), headers=a[Role.OWNER])
        assert r.status_code == 202
        a_users = (await client.get("/v1/users", headers=a[Role.OWNER])).json()["users"]
        a_keys = (await client.get("/v1/api-keys", headers=a[Role.OWNER])).json()["api_keys"]
        document = (await client.get("/openapi.json")).json()
        secured = 0
        for path, operations in document["paths"].items():
            for method, op in operations.items():
                if "security" not in op:
                    continue
                secured += 1
                targets = [concrete(path)]
                if "{user_id}" in path:
                    targets = [path.replace("{user_id}", u["id"]) for u in a_users]
                if "{key_id}" in path:
                    targets = [path.replace("{key_id}", k["id"]) for k in a_keys]
                for target in targets:
                    if target.endswith("/stream"):
                        continue  # covered by the SSE test: B's stream only carries B's anomalies
                    r = await client.request(
                        method.upper(), target, headers=b_owner.auth, json=None
                    )
                    assert "tenant-a" not in r.text, (method, target, r.text)
                    assert r.status_code < 500, (method, target, r.text)
        assert secured >= 10
        # Nothing of A was deleted by B's attempts.
        assert len((await client.get("/v1/users", headers=a[Role.OWNER])).json()["users"]) == len(
            a_users
        )
        assert len(
            (await client.get("/v1/api-keys", headers=a[Role.OWNER])).json()["api_keys"]
        ) == len(a_keys)


def test_admin_create_tenant_cli(nats_server: ManagedNatsServer) -> None:
    args = [
        sys.executable,
        "-m",
        "driftlock.cli",
        "admin",
        "create-tenant",
        "--tenant",
        "globex",
        "--owner-email",
        "ops@globex.example",
        "--nats-url",
        nats_server.url,
    ]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    assert "password" in first.stdout and "globex" in first.stdout
    again = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 1 and "exists" in again.stderr


@pytest.mark.parametrize("tenant", ["bad tenant", "x" * 65])
def test_admin_create_tenant_refuses_bad_ids(nats_server: ManagedNatsServer, tenant: str) -> None:
    args = [
        sys.executable,
        "-m",
        "driftlock.cli",
        "admin",
        "create-tenant",
        "--tenant",
        tenant,
        "--owner-email",
        "ops@x.example",
        "--nats-url",
        nats_server.url,
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "tenant ids match" in result.stderr
