"""Token-bucket rate limits per API key or user and per tenant, sized by the tenant's plan.

Buckets live in each gateway's memory: with N gateways behind a balancer a tenant gets at
most N times its rate, the usual trade (no shared state on the hot path)."""

import math
import time
from dataclasses import dataclass, field

import msgspec

from driftlock.gateway.errors import ApiError


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    requests_per_s: float
    """Per API key or user."""
    tenant_requests_per_s: float
    tenant_points_per_s: float
    burst_s: float = 2.0
    """A bucket holds this many seconds of its rate."""


DEFAULT_PLANS: dict[str, Plan] = {
    "free": Plan(requests_per_s=5, tenant_requests_per_s=10, tenant_points_per_s=1_000),
    "standard": Plan(requests_per_s=200, tenant_requests_per_s=1_000, tenant_points_per_s=200_000),
    "unlimited": Plan(
        requests_per_s=math.inf, tenant_requests_per_s=math.inf, tenant_points_per_s=math.inf
    ),
}


@dataclass(slots=True)
class TokenBucket:
    rate: float
    capacity: float
    tokens: float
    stamp: float = field(default_factory=time.monotonic)

    def take(self, amount: float, now: float) -> float:
        """Take `amount` tokens; 0 if granted, else seconds until they would be there."""
        if math.isinf(self.rate):
            return 0.0
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if amount <= self.tokens:
            self.tokens -= amount
            return 0.0
        if amount > self.capacity:  # can never fit: the caller must send smaller requests
            return math.inf
        return (amount - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, plans: dict[str, Plan]) -> None:
        self._plans = plans
        self._buckets: dict[str, TokenBucket] = {}

    def plan(self, name: str) -> Plan:
        return self._plans.get(name) or self._plans["standard"]

    def check_request(self, plan_name: str, tenant: str, principal_key: str) -> None:
        plan = self.plan(plan_name)
        now = time.monotonic()
        waits = (
            self._bucket(f"k:{principal_key}", plan.requests_per_s, plan.burst_s).take(1, now),
            self._bucket(f"t:{tenant}", plan.tenant_requests_per_s, plan.burst_s).take(1, now),
        )
        self._raise_if_waiting(max(waits), "request rate")

    def check_points(self, plan_name: str, tenant: str, points: int) -> None:
        plan = self.plan(plan_name)
        bucket = self._bucket(f"p:{tenant}", plan.tenant_points_per_s, plan.burst_s)
        self._raise_if_waiting(bucket.take(points, time.monotonic()), "points per second")

    def _bucket(self, key: str, rate: float, burst_s: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate:
            capacity = max(rate * burst_s, 1.0)
            bucket = self._buckets[key] = TokenBucket(rate, capacity, capacity)
        return bucket

    def _raise_if_waiting(self, wait: float, what: str) -> None:
        if wait <= 0:
            return
        if math.isinf(wait):
            raise ApiError(
                429, "rate_limited", f"request exceeds the plan's {what} burst; split it"
            )
        raise ApiError(
            429,
            "rate_limited",
            f"{what} limit of your plan reached; retry after {math.ceil(wait)} s",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
