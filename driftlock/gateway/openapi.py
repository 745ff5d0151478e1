"""The OpenAPI 3.1 document, built from the endpoint declarations and their pydantic models."""

from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from driftlock.gateway.models import ErrorBody
from driftlock.gateway.routing import Endpoint

REF = "#/components/schemas/{model}"
_ERRORS = {
    400: "Malformed request",
    401: "Missing or invalid credentials",
    403: "The role may not do this",
    404: "Not found",
    413: "Body too large",
    422: "Invalid input; details lists every bad field by path",
    429: "Rate limited; see Retry-After",
}


def openapi_document(endpoints: list[Endpoint], version: str) -> dict[str, Any]:
    models: set[type[BaseModel]] = {ErrorBody}
    for e in endpoints:
        models.update(m for m in (e.body, e.response) if m is not None)
    keyed: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (m, "validation") for m in sorted(models, key=lambda m: m.__name__)
    ]
    refs, schemas = models_json_schema(keyed, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "DriftLock gateway", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "JWT or API key"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def _operation(e: Endpoint, refs: dict[Any, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": e.summary,
        "tags": [e.tag],
        "operationId": _operation_id(e),
        "responses": {},
    }
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_params(e.path)
    ]
    if e.query is not None:
        schema = e.query.model_json_schema(ref_template=REF)
        required = set(schema.get("required", []))
        params += [
            {"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema.get("properties", {}).items()
        ]
    if params:
        op["parameters"] = params
    if e.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(e.body, "validation")]}},
        }
    ok: dict[str, Any] = {"description": "OK"}
    if e.response is not None:
        ok["content"] = {"application/json": {"schema": refs[(e.response, "validation")]}}
    op["responses"][str(e.status)] = ok
    error_ref = refs[(ErrorBody, "validation")]
    codes = [400, 404, 413, 422] if e.permission is None else [400, 401, 403, 404, 413, 422, 429]
    for code in codes:
        op["responses"][str(code)] = {
            "description": _ERRORS[code],
            "content": {"application/json": {"schema": error_ref}},
        }
    if e.permission is not None:
        op["security"] = [{"bearer": []}, {"apiKey": []}]
        op["description"] = f"Requires permission `{e.permission.value}`."
    return op


def _operation_id(e: Endpoint) -> str:
    path = e.path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
    return f"{e.method.lower()}_{path}"


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]
