"""Request and response models: they validate requests and generate /openapi.json."""

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, WithJsonSchema, field_validator

from driftlock.gateway.roles import Role
from driftlock.ids import METRIC_RE
from driftlock.wire.messages import AnomalyKind

MetricId = Annotated[str, Field(pattern=f"^{METRIC_RE.pattern}$", examples=["cpu:load"])]
Email = Annotated[str, Field(pattern=r"^[^@\s]{1,64}@[^@\s]{1,255}$", max_length=320)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Timestamp = FiniteFloat | Annotated[str, Field(max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenRequest(Strict):
    email: Email
    password: str = Field(min_length=1, max_length=1024)


class TokenResponse(Strict):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int


class RefreshRequest(Strict):
    refresh_token: str = Field(min_length=1, max_length=512)


class LogoutRequest(Strict):
    refresh_token: str | None = Field(default=None, max_length=512)


class Me(Strict):
    tenant: str
    role: Role
    kind: str
    subject: str


class UserCreate(Strict):
    email: Email
    password: str = Field(min_length=12, max_length=1024)
    role: Role


class UserOut(Strict):
    id: str
    email: str
    role: Role
    created_at: float


class UserList(Strict):
    users: list[UserOut]


class ApiKeyCreate(Strict):
    name: str = Field(min_length=1, max_length=100)
    role: Role = Role.INGEST
    expires_in_s: int | None = Field(default=None, gt=0, le=10 * 365 * 86400)


class ApiKeyOut(Strict):
    id: str
    name: str
    role: Role
    created_at: float
    expires_at: float | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret key. Shown once; only its hash is stored.")


class ApiKeyList(Strict):
    api_keys: list[ApiKeyOut]


class Usage(Strict):
    requests: int
    points: int


class TenantOut(Strict):
    id: str
    name: str
    plan: str
    usage: Usage


class PointObject(Strict):
    ts: Timestamp | None = None
    value: FiniteFloat


Point = tuple[Timestamp, FiniteFloat] | PointObject
_POINTS_SCHEMA = TypeAdapter(list[Point]).json_schema()
_POINTS_SCHEMA["minItems"] = 1


class MetricPoints(Strict):
    metric: MetricId
    # Points are checked one by one by the ingest route (one precise error per bad field,
    # without pydantic's per-union-branch noise); the schema still documents their shape.
    points: Annotated[list[Any], WithJsonSchema(_POINTS_SCHEMA)] = Field(min_length=1)


class IngestRequest(Strict):
    """Also accepted as NDJSON (one MetricPoints or one {"metric", "ts", "value"} per line)
    and as msgpack of this same document."""

    metrics: list[MetricPoints] = Field(min_length=1)


class IngestResponse(Strict):
    accepted: int
    metrics: int


class AnomalyQuery(Strict):
    since: float | None = Field(default=None, description="Unix seconds, by detection time")
    until: float | None = None
    metric: MetricId | None = None
    metric_pattern: str | None = Field(
        default=None, max_length=200, description="glob over metric ids, e.g. cpu:*"
    )
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    kind: AnomalyKind | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: int | None = Field(default=None, ge=1, description="next_cursor of the previous page")

    @field_validator("since", "until")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("not a finite number")
        return value


class AnomalyOut(BaseModel):
    id: str
    tenant: str
    metric: str
    ts: float
    value: float
    score: float
    expected: tuple[float, float]
    kind: AnomalyKind
    detectors: list[str]
    seq: int
    index: int
    detected_at: float
    schema_version: int = Field(alias="schema", default=1)


class AnomalyPage(Strict):
    anomalies: list[AnomalyOut]
    next_cursor: int | None


class StreamQuery(Strict):
    metric_pattern: str | None = Field(default=None, max_length=200)
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    kind: AnomalyKind | None = None


class MetricSummary(Strict):
    metric: str
    points: int
    anomalies: int
    first_ts: float
    last_ts: float
    last_value: float


class MetricList(Strict):
    metrics: list[MetricSummary]


class MetricDetail(MetricSummary):
    detector: dict[str, Any] = Field(description="the detector's state summary")
    recent_values: list[float]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail
