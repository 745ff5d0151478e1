"""`driftlock admin …`: one-shot administration against the control plane."""

from driftlock.bus.connection import connect
from driftlock.gateway.bootstrap import Credentials, create_tenant
from driftlock.gateway.control import ControlPlane
from driftlock.settings import Settings


async def create_tenant_once(
    settings: Settings, tenant: str, owner_email: str, plan: str
) -> Credentials:
    nc = await connect(settings.nats_url, name="driftlock-admin")
    try:
        control = ControlPlane(
            nc.jetstream(), settings.prefix, settings.access_token_ttl_s, replicas=settings.replicas
        )
        await control.start()
        try:
            return await create_tenant(control, tenant=tenant, owner_email=owner_email, plan=plan)
        finally:
            await control.stop()
    finally:
        await nc.drain()
