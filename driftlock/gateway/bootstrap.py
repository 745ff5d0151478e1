"""Creating a tenant with its first owner: `driftlock up` on first start, or
`driftlock admin create-tenant`."""

import secrets
import time
from dataclasses import dataclass

from driftlock.errors import ConfigError
from driftlock.gateway.control import ControlPlane, TenantRecord, UserRecord, user_id_for
from driftlock.gateway.roles import Role
from driftlock.gateway.security import hash_password
from driftlock.ids import TENANT_RULE, is_valid_tenant


@dataclass(frozen=True)
class Credentials:
    tenant: str
    email: str
    password: str


async def create_tenant(
    control: ControlPlane, *, tenant: str, owner_email: str, plan: str = "standard"
) -> Credentials:
    if not is_valid_tenant(tenant):
        raise ConfigError(f"tenant {tenant!r}: {TENANT_RULE}")
    now = time.time()
    if not await control.tenants.create(
        tenant, TenantRecord(id=tenant, name=tenant, plan=plan, created_at=now)
    ):
        raise ConfigError(f"tenant {tenant!r} exists")
    password = secrets.token_urlsafe(18)
    user = UserRecord(
        id=user_id_for(owner_email),
        tenant=tenant,
        email=owner_email.strip().lower(),
        role=Role.OWNER,
        password_hash=await hash_password(password),
        created_at=now,
    )
    if not await control.users.create(user.id, user):
        await control.tenants.delete(tenant)
        raise ConfigError(f"a user with e-mail {owner_email} exists")
    return Credentials(tenant=tenant, email=user.email, password=password)
