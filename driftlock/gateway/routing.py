"""Endpoints are declared once — method, path, permission, models — and that declaration
drives authentication, authorisation, rate limiting, validation and the OpenAPI document."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from driftlock.gateway.errors import ApiError, invalid
from driftlock.gateway.roles import Permission
from driftlock.gateway.security import Principal, authenticate

if TYPE_CHECKING:
    from driftlock.gateway.service import Gateway


@dataclass(slots=True)
class Call:
    """What a handler gets: the request, who makes it, and its validated inputs."""

    request: Request
    gateway: "Gateway"
    principal: Principal | None
    body: Any = None
    query: Any = None

    @property
    def tenant(self) -> str:
        assert self.principal is not None
        return self.principal.tenant

    @property
    def who(self) -> Principal:
        assert self.principal is not None
        return self.principal


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    permission: Permission | None
    """None: public (no credentials)."""
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    parse_body: bool = True
    """False: the handler reads the body itself (ingest takes several formats)."""

    async def serve(self, gateway: "Gateway", request: Request) -> Response:
        principal = None
        if self.permission is not None:
            try:
                principal = authenticate(gateway.control, request.headers)
            except ApiError:
                gateway.metrics.auth_failures.inc()
                raise
            principal.require(self.permission)
            gateway.limit_request(principal)
        call = Call(request, gateway, principal)
        if self.query is not None:
            call.query = validate(self.query, dict(request.query_params), "query")
        if self.body is not None and self.parse_body:
            call.body = validate(self.body, await json_body(request), "body")
        return await self.handler(call)


async def json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise ApiError(400, "malformed_body", "request body is empty; send a JSON document")
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ApiError(400, "malformed_body", f"body is not valid JSON: {exc}") from None


def validate(model: type[BaseModel], data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(validation_details(exc), f"{where} is invalid") from None


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    return [{"path": error_path(e["loc"]), "message": e["msg"]} for e in exc.errors()]


def error_path(loc: tuple[int | str, ...]) -> str:
    """('metrics', 3, 'points', 17, 1) → 'metrics[3].points[17][1]'; union branch names that
    pydantic inserts (e.g. 'tuple[...]') are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in {"PointObject", "function-after"}:
            continue
        else:
            out += f".{part}" if out else part
    return out or "(root)"
