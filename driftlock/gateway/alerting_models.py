"""Request and response models of the alerting routes. Everything a tenant configures is
checked here, so the alerter only ever sees valid configuration: URLs, e-mail addresses,
template syntax, time zones, references between objects (checked by the handlers)."""

import urllib.parse
import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from driftlock.alerting.templates import syntax_error
from driftlock.gateway.models import Email, Strict
from driftlock.wire.messages import AnomalyKind

IdStr = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Glob = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_:*?\[\]!-]+$")]
LabelName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
LabelValue = Annotated[str, Field(max_length=200)]
Duration = Annotated[float, Field(ge=0, le=30 * 86400, allow_inf_nan=False)]
Hostname = Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]{1,253}$|^\[[0-9A-Fa-f:.]{2,45}\]$")]


def _template(value: str | None) -> str | None:
    if value is not None and (problem := syntax_error(value)) is not None:
        raise ValueError(problem)
    return value


def _url(value: str) -> str:
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or " " in value:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        parsed.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        raise ValueError("the port is not a number in 0..65535") from None
    return value


Template = Annotated[str | None, Field(default=None, max_length=20_000), AfterValidator(_template)]
Url = Annotated[str, Field(max_length=2048), AfterValidator(_url)]


class MatchersIn(Strict):
    metric: Glob = Field(default="*", description="glob over metric ids")
    kinds: list[AnomalyKind] = Field(default_factory=list, max_length=8)
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    labels: dict[LabelName, LabelValue] = Field(default_factory=dict, max_length=20)


class EmailIn(Strict):
    type: Literal["email"]
    host: Hostname
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    tls: bool = Field(default=False, description="implicit TLS (port 465) instead of STARTTLS")
    username: str | None = Field(default=None, max_length=256)
    password: str | None = Field(default=None, max_length=256)
    from_addr: Email
    to: list[Email] = Field(min_length=1, max_length=50)
    subject_template: Template = None
    body_template: Template = None
    html_template: Template = None


class SlackIn(Strict):
    type: Literal["slack"]
    webhook_url: Url
    template: Template = None


class WebhookIn(Strict):
    type: Literal["webhook"]
    url: Url
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=256,
        description="HMAC-SHA256 key; generated (and shown once) when omitted",
    )
    format: Literal["driftlock", "alertmanager"] = "driftlock"
    template: Template = None


class ChannelCreate(Strict):
    name: str = Field(min_length=1, max_length=100)
    config: Annotated[EmailIn | SlackIn | WebhookIn, Field(discriminator="type")]
    max_per_hour: int | None = Field(default=None, ge=1, le=100_000)


class HealthOut(Strict):
    state: str
    consecutive_failures: int
    last_error: str
    last_success_at: float | None
    last_failure_at: float | None


class ChannelOut(Strict):
    id: str
    name: str
    type: str
    config: dict[str, Any] = Field(description="as configured; secrets are masked")
    max_per_hour: int | None
    created_at: float
    health: HealthOut | None = Field(description="null until the first delivery attempt")


class ChannelCreated(ChannelOut):
    secret: str | None = Field(description="the generated webhook secret, shown once")


class ChannelList(Strict):
    channels: list[ChannelOut]


class TestResult(Strict):
    delivered: bool
    error: str | None


class RouteIn(Strict):
    name: str = Field(default="", pattern=r"^[A-Za-z0-9_-]{0,64}$")
    match: MatchersIn = Field(default_factory=MatchersIn)
    channels: list[IdStr] | None = Field(default=None, max_length=20)
    policy: IdStr | None = None
    group_by: list[LabelName] | None = Field(default=None, max_length=10)
    group_wait_s: Duration | None = None
    group_interval_s: Duration | None = None
    repeat_interval_s: Duration | None = None
    resolve_after_s: Duration | None = None
    flap_window_s: Duration | None = None
    flap_threshold: int | None = Field(default=None, ge=2, le=100)
    correlate_s: Duration | None = Field(
        default=None,
        description="join an anomaly whose group has no open incident to the route's incident "
        "that saw an anomaly within this many seconds",
    )
    continue_: bool = Field(default=False, alias="continue")
    routes: list["RouteIn"] = Field(default_factory=list, max_length=50)


class LabelRuleIn(Strict):
    metric: Glob
    labels: dict[LabelName, LabelValue] = Field(min_length=1, max_length=20)


class RoutingIn(Strict):
    route: RouteIn
    labels: list[LabelRuleIn] = Field(default_factory=list, max_length=200)

    @model_validator(mode="after")
    def _bounded(self) -> "RoutingIn":
        def size(r: RouteIn, depth: int) -> int:
            if depth > 8:
                raise ValueError("routes nest deeper than 8 levels")
            return 1 + sum(size(child, depth + 1) for child in r.routes)

        if size(self.route, 1) > 200:
            raise ValueError("more than 200 routes")
        return self


class RoutingOut(Strict):
    route: dict[str, Any]
    labels: list[dict[str, Any]]
    configured: bool = Field(description="false: the default (everything to every channel)")


class StepIn(Strict):
    after_s: Duration
    channels: list[IdStr] = Field(min_length=1, max_length=10)


class PolicyCreate(Strict):
    name: str = Field(min_length=1, max_length=100)
    steps: list[StepIn] = Field(min_length=1, max_length=10)


class PolicyOut(PolicyCreate):
    id: str
    created_at: float


class PolicyList(Strict):
    policies: list[PolicyOut]


class SilenceCreate(Strict):
    matchers: MatchersIn
    starts_at: float | None = Field(default=None, description="Unix seconds; default now")
    ends_at: float | None = None
    duration_s: float | None = Field(default=None, gt=0, le=365 * 86400)
    comment: str = Field(default="", max_length=1000)

    @model_validator(mode="after")
    def _one_end(self) -> "SilenceCreate":
        if (self.ends_at is None) == (self.duration_s is None):
            raise ValueError("give exactly one of ends_at and duration_s")
        return self

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _plausible(cls, value: float | None) -> float | None:
        if value is not None and not 946_684_800 <= value <= 32_503_680_000:
            raise ValueError("must be Unix seconds between 2000 and 3000")
        return value


class SilenceOut(Strict):
    id: str
    matchers: MatchersIn
    starts_at: float
    ends_at: float
    created_by: str
    comment: str
    active: bool


class SilenceList(Strict):
    silences: list[SilenceOut]


class WindowCreate(Strict):
    name: str = Field(min_length=1, max_length=100)
    matchers: MatchersIn = Field(default_factory=MatchersIn)
    days: list[int] = Field(min_length=1, max_length=7, description="0 = Monday … 6 = Sunday")
    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM")
    duration_s: float = Field(ge=60, le=7 * 86400)
    timezone: str = Field(default="UTC", max_length=64)

    @field_validator("days")
    @classmethod
    def _days(cls, value: list[int]) -> list[int]:
        if any(not 0 <= d <= 6 for d in value) or len(set(value)) != len(value):
            raise ValueError("days are distinct numbers 0 (Monday) to 6 (Sunday)")
        return sorted(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class WindowOut(WindowCreate):
    id: str
    active: bool


class WindowList(Strict):
    windows: list[WindowOut]


class InhibitionCreate(Strict):
    source: MatchersIn
    target: MatchersIn
    equal: list[LabelName] = Field(default_factory=list, max_length=10)


class InhibitionOut(InhibitionCreate):
    id: str


class InhibitionList(Strict):
    inhibitions: list[InhibitionOut]
