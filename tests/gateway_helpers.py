"""Helpers for gateway tests: tenants with owners, logged-in clients."""

from dataclasses import dataclass

import httpx

from driftlock.gateway.bootstrap import create_tenant
from driftlock.gateway.server import GatewayServer


@dataclass
class Account:
    tenant: str
    email: str
    password: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def new_tenant(gateway: GatewayServer, client: httpx.AsyncClient, tenant: str) -> Account:
    gw = gateway.app.gateway
    assert gw is not None
    creds = await create_tenant(gw.control, tenant=tenant, owner_email=f"owner@{tenant}.example")
    token = await login(client, creds.email, creds.password)
    return Account(tenant, creds.email, creds.password, token)


async def login(client: httpx.AsyncClient, email: str, password: str) -> str:
    r = await client.post("/v1/auth/token", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token
