"""The id rules of the public contract (DESIGN §2): ids are NATS-token-safe."""

import re

TENANT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
METRIC_RE = re.compile(r"[A-Za-z0-9_:-]{1,200}")

TENANT_RULE = "tenant ids match [A-Za-z0-9_-]{1,64}"
METRIC_RULE = "metric ids match [A-Za-z0-9_:-]{1,200}"


def is_valid_tenant(tenant: str) -> bool:
    return TENANT_RE.fullmatch(tenant) is not None


def is_valid_metric(metric: str) -> bool:
    return METRIC_RE.fullmatch(metric) is not None
