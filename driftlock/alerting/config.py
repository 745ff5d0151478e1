"""Per-tenant alerting configuration as stored in KV: channels, the routing tree, escalation
policies, silences, maintenance windows and inhibition rules. The gateway validates input
with pydantic and stores these msgspec structs; the alerter only ever decodes them."""

from typing import Literal

import msgspec


class Matchers(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What an anomaly or incident must look like. Every given field must match; `labels`
    compares exact values (a missing label never matches)."""

    metric: str = "*"
    """glob over metric ids, e.g. `db:*`"""
    kinds: list[str] = msgspec.field(default_factory=list)
    """empty: any kind"""
    min_score: float = 0.0
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class EmailConfig(msgspec.Struct, tag="email", kw_only=True):
    host: str
    port: int = 587
    starttls: bool = True
    tls: bool = False
    """implicit TLS (port 465); excludes `starttls`"""
    username: str | None = None
    password: str | None = None
    from_addr: str
    to: list[str]
    subject_template: str | None = None
    body_template: str | None = None
    html_template: str | None = None


class SlackConfig(msgspec.Struct, tag="slack", kw_only=True):
    webhook_url: str
    template: str | None = None


class WebhookConfig(msgspec.Struct, tag="webhook", kw_only=True):
    url: str
    secret: str
    """HMAC-SHA256 key of the signature header"""
    format: Literal["driftlock", "alertmanager"] = "driftlock"
    template: str | None = None
    """renders the payload's `summary` field"""


ChannelConfig = EmailConfig | SlackConfig | WebhookConfig


class Channel(msgspec.Struct, kw_only=True):
    id: str
    tenant: str
    name: str
    config: ChannelConfig
    max_per_hour: int | None = None
    """rate cap: notifications beyond it within one clock hour are dead-lettered"""
    created_at: float = 0.0


class Route(msgspec.Struct, kw_only=True, omit_defaults=True, rename={"continue_": "continue"}):
    """A node of the routing tree. Unset settings are inherited from the parent."""

    name: str = ""
    match: Matchers = msgspec.field(default_factory=Matchers)
    channels: list[str] | None = None
    policy: str | None = None
    group_by: list[str] | None = None
    group_wait_s: float | None = None
    group_interval_s: float | None = None
    repeat_interval_s: float | None = None
    resolve_after_s: float | None = None
    flap_window_s: float | None = None
    flap_threshold: int | None = None
    correlate_s: float | None = None
    continue_: bool = False
    routes: list["Route"] = msgspec.field(default_factory=list)


class LabelRule(msgspec.Struct, kw_only=True):
    """Labels given to every anomaly of the metrics matching `metric` (a glob): what lets
    routes, group_by, silences and inhibitions speak of services instead of metric ids."""

    metric: str
    labels: dict[str, str]


class Routing(msgspec.Struct, kw_only=True):
    route: Route
    labels: list[LabelRule] = msgspec.field(default_factory=list)
    updated_at: float = 0.0


class EscalationStep(msgspec.Struct, kw_only=True):
    after_s: float
    """seconds after the first notification"""
    channels: list[str]


class Policy(msgspec.Struct, kw_only=True):
    id: str
    tenant: str
    name: str
    steps: list[EscalationStep]
    created_at: float = 0.0


class Silence(msgspec.Struct, kw_only=True):
    id: str
    tenant: str
    matchers: Matchers
    starts_at: float
    ends_at: float
    created_by: str
    comment: str = ""
    created_at: float = 0.0


class MaintenanceWindow(msgspec.Struct, kw_only=True):
    """Recurring: on `days` (0 = Monday) from `start` (HH:MM, in `timezone`) for
    `duration_s` seconds; a window may run past midnight."""

    id: str
    tenant: str
    name: str
    matchers: Matchers
    days: list[int]
    start: str
    duration_s: float
    timezone: str = "UTC"
    created_at: float = 0.0


class Inhibition(msgspec.Struct, kw_only=True):
    """While an unresolved incident matches `source`, incidents matching `target` that agree
    with it on every `equal` label are not notified."""

    id: str
    tenant: str
    source: Matchers
    target: Matchers
    equal: list[str] = msgspec.field(default_factory=list)
    created_at: float = 0.0


class Defaults(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the root route when the tenant leaves them unset."""

    group_by: tuple[str, ...] = ("metric",)
    group_wait_s: float = 30.0
    group_interval_s: float = 300.0
    repeat_interval_s: float = 4 * 3600.0
    resolve_after_s: float = 900.0
    flap_window_s: float = 3600.0
    flap_threshold: int = 3
    correlate_s: float = 0.0


class RouteSettings(msgspec.Struct, frozen=True, kw_only=True):
    """A matched route with every inherited setting resolved; incidents keep a copy, so
    changing the tree later does not change how an open incident behaves."""

    route: str
    channels: tuple[str, ...]
    policy: str | None
    group_by: tuple[str, ...]
    group_wait_s: float
    group_interval_s: float
    repeat_interval_s: float
    resolve_after_s: float
    flap_window_s: float
    flap_threshold: int
    correlate_s: float = 0.0
    """> 0: an anomaly whose own group has no open incident joins the route's incident that
    saw an anomaly within this many seconds (time-window correlation across groups)"""
