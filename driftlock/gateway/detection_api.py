"""The tenant's detection settings: sensitivity, per-metric-pattern overrides and custom rules.

One JSON document per tenant in the KV bucket `<prefix>_detect`; nodes watch it and apply it to
the next batch of every matching stream. Owners and admins write it, every reading role reads
it. Bad documents are refused whole with 422 and every problem by field path."""

from typing import Annotated, Any

import msgspec
from pydantic import Field
from starlette.responses import JSONResponse, Response

from driftlock.detect.tuning import DEFAULT_SENSITIVITY, DetectionConfig, problems
from driftlock.gateway.errors import invalid
from driftlock.gateway.models import Strict
from driftlock.gateway.roles import Permission
from driftlock.gateway.routing import Call, Endpoint

Finite = Annotated[float, Field(allow_inf_nan=False)]
Sensitivity = Annotated[float, Field(ge=0.0, le=1.0, description="0: fewest alerts, 1: most")]
Pattern = Annotated[str, Field(min_length=1, max_length=200, examples=["api:*"])]


class OverrideIn(Strict):
    pattern: Pattern
    sensitivity: Sensitivity


class RuleIn(Strict):
    metric: Pattern = "*"
    name: str = Field(default="", max_length=100)
    above: Finite | None = Field(default=None, description="value above this")
    below: Finite | None = Field(default=None, description="value below this")
    max_rate: Finite | None = Field(default=None, description="|Δvalue/Δt| per second above this")
    absent_s: Finite | None = Field(
        default=None, description="no point for more than this many seconds"
    )


class DetectionIn(Strict):
    sensitivity: Sensitivity = DEFAULT_SENSITIVITY
    overrides: list[OverrideIn] = Field(default_factory=list, max_length=100)
    rules: list[RuleIn] = Field(default_factory=list, max_length=100)


def _document(config: DetectionConfig) -> dict[str, Any]:
    """Every field, absent conditions as null."""
    out: dict[str, Any] = msgspec.to_builtins(config)
    return out


async def get_detection(call: Call) -> Response:
    config = call.gateway.control.detection.get(call.tenant) or DetectionConfig()
    return JSONResponse(_document(config))


async def put_detection(call: Call) -> Response:
    req: DetectionIn = call.body
    config = msgspec.convert(req.model_dump(), DetectionConfig)
    found = problems(config)
    if found:
        raise invalid([{"path": p, "message": m} for p, m in found], "body is invalid")
    await call.gateway.control.detection.put(call.tenant, config)
    return JSONResponse(_document(config))


ENDPOINTS = [
    Endpoint("GET", "/v1/detection", get_detection,
             "Detection settings of the tenant: sensitivity, overrides, custom rules",
             "detection", Permission.READ, response=DetectionIn),
    Endpoint("PUT", "/v1/detection", put_detection,
             "Replace the detection settings; nodes apply them to the next batch",
             "detection", Permission.CONFIGURE_DETECTION, body=DetectionIn,
             response=DetectionIn),
]  # fmt: skip
