"""Roles and what each may do. One table, checked on every route."""

from enum import StrEnum


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    EDITOR = "editor"
    VIEWER = "viewer"
    INGEST = "ingest"


class Permission(StrEnum):
    INGEST = "ingest"
    READ = "read"
    MANAGE_KEYS = "manage_keys"
    MANAGE_USERS = "manage_users"
    MANAGE_TENANT = "manage_tenant"
    CONFIGURE_DETECTION = "configure_detection"
    """Sensitivity and custom rules (owners and admins)."""
    MANAGE_ALERTING = "manage_alerting"
    """Channels, routes, escalation policies, silences, maintenance windows, inhibitions."""
    ACK_INCIDENTS = "ack_incidents"
    VIEW_CLUSTER = "view_cluster"
    """Nodes, partitions and lag: operator information (owners and admins)."""
    SELF = "self"
    """Any authenticated principal: who am I, log out."""


PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.OWNER: frozenset(Permission),
    Role.ADMIN: frozenset(Permission) - {Permission.MANAGE_TENANT},
    Role.EDITOR: frozenset(
        {
            Permission.INGEST,
            Permission.READ,
            Permission.SELF,
            Permission.MANAGE_ALERTING,
            Permission.ACK_INCIDENTS,
        }
    ),
    Role.VIEWER: frozenset({Permission.READ, Permission.SELF}),
    Role.INGEST: frozenset({Permission.INGEST, Permission.SELF}),
}

RANK = {Role.OWNER: 4, Role.ADMIN: 3, Role.EDITOR: 2, Role.VIEWER: 1, Role.INGEST: 1}


def can_grant(granter: Role, role: Role) -> bool:
    """Nobody hands out more power than they hold; only owners make owners."""
    if role is Role.OWNER:
        return granter is Role.OWNER
    return RANK[granter] >= RANK[role] and granter in (Role.OWNER, Role.ADMIN)
