"""The gateway's shared state: NATS, the control plane, rate limits, metrics, tracing."""

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter

from driftlock import tracing
from driftlock.alerting.store import AlertingStore
from driftlock.bus.subjects import Subjects
from driftlock.gateway.anomaly_index import AnomalyIndex
from driftlock.gateway.control import ControlPlane
from driftlock.gateway.errors import unauthorized
from driftlock.gateway.ratelimit import RateLimiter
from driftlock.gateway.security import Principal
from driftlock.settings import Settings

log = logging.getLogger("driftlock.gateway")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = PromCounter(
            "driftlock_gateway_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "driftlock_gateway_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.auth_failures = PromCounter(
            "driftlock_gateway_auth_failures",
            "Requests refused for missing or bad credentials",
            registry=r,
        )
        self.rate_limited = PromCounter(
            "driftlock_gateway_rate_limited", "Requests refused with 429", registry=r
        )
        self.tenant_requests = PromCounter(
            "driftlock_gateway_tenant_requests",
            "Authenticated requests per tenant",
            ["tenant"],
            registry=r,
        )
        self.tenant_points = PromCounter(
            "driftlock_gateway_tenant_points", "Points accepted per tenant", ["tenant"], registry=r
        )
        # Labelled children, looked up once: labels() takes a lock and builds a key per call.
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._latency: dict[str, Any] = {}
        self._tenant_requests: dict[str, Any] = {}
        self._tenant_points: dict[str, Any] = {}

    def observe_request(self, route: str, method: str, status: int, started: float) -> None:
        key = (route, method, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(route, method, str(status))
        counter.inc()
        histogram = self._latency.get(route)
        if histogram is None:
            histogram = self._latency[route] = self.latency.labels(route)
        histogram.observe(time.perf_counter() - started)

    def count_tenant_request(self, tenant: str) -> None:
        counter = self._tenant_requests.get(tenant)
        if counter is None:
            counter = self._tenant_requests[tenant] = self.tenant_requests.labels(tenant)
        counter.inc()

    def count_tenant_points(self, tenant: str, points: int) -> None:
        counter = self._tenant_points.get(tenant)
        if counter is None:
            counter = self._tenant_points[tenant] = self.tenant_points.labels(tenant)
        counter.inc(points)


@dataclass
class Gateway:
    settings: Settings
    nc: Client
    js: JetStreamContext
    control: ControlPlane
    limiter: RateLimiter
    alerting: AlertingStore | None = None
    anomalies: AnomalyIndex | None = None
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    tracer: trace.Tracer = field(default_factory=lambda: tracing.tracer("driftlock.gateway"))
    usage_requests: Counter[str] = field(default_factory=Counter)
    usage_points: Counter[str] = field(default_factory=Counter)

    @cached_property
    def subjects(self) -> Subjects:
        return Subjects(self.settings.prefix)

    def plan_of(self, tenant: str) -> str:
        record = self.control.tenants.get(tenant)
        if record is None:
            raise unauthorized("tenant no longer exists")
        return record.plan

    def limit_request(self, principal: Principal) -> None:
        try:
            self.limiter.check_request(
                self.plan_of(principal.tenant), principal.tenant, principal.limiter_key
            )
        except Exception:
            self.metrics.rate_limited.inc()
            raise
        self.usage_requests[principal.tenant] += 1
        self.metrics.count_tenant_request(principal.tenant)

    def limit_points(self, tenant: str, points: int) -> None:
        try:
            self.limiter.check_points(self.plan_of(tenant), tenant, points)
        except Exception:
            self.metrics.rate_limited.inc()
            raise

    def count_points(self, tenant: str, points: int) -> None:
        self.usage_points[tenant] += points
        self.metrics.count_tenant_points(tenant, points)
