"""POST /v1/ingest: many metrics and points per request, as JSON, NDJSON or msgpack; every
bad field reported by path; published as batched asynchronous JetStream publishes."""

import math
import time
from collections.abc import Iterator
from datetime import datetime
from itertools import chain
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from opentelemetry.propagate import inject
from pydantic import ValidationError
from starlette.responses import Response

from driftlock.bus.publish import publish_all
from driftlock.gateway.errors import ApiError, invalid
from driftlock.gateway.models import IngestRequest, IngestResponse
from driftlock.gateway.roles import Permission
from driftlock.gateway.routing import Call, Endpoint, validation_details
from driftlock.ids import is_valid_metric
from driftlock.wire.payload import MAX_FUTURE_S, MIN_TS, MSGPACK, encode_columns

Pairs = list[tuple[float, float]]
Points = npt.NDArray[np.float64]
"""One row per point: ts, value."""
Errors = list[dict[str, str]]
MAX_ERRORS = 100
_json = msgspec.json.Encoder()


async def ingest(call: Call) -> Response:
    raw = await call.request.body()
    content_type = call.request.headers.get("content-type", "application/json")
    kind = content_type.split(";", 1)[0].strip().lower()
    now = time.time()
    if kind in ("application/json", ""):
        batches = _fast_path(_fast_json, raw, now) or _parse_document(
            _decode(msgspec.json.decode, raw, "JSON"), now
        )
    elif kind in ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack"):
        batches = _fast_path(_fast_msgpack, raw, now) or _parse_document(
            _decode(msgspec.msgpack.decode, raw, "msgpack"), now
        )
    elif kind in ("application/x-ndjson", "application/ndjson", "application/jsonl"):
        batches = _parse_ndjson(raw, now)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content type {kind!r}; use application/json, application/x-ndjson "
            "or application/msgpack",
        )
    points = sum(len(p) for p in batches.values())
    call.gateway.limit_points(call.tenant, points)
    await _publish(call, batches)
    call.gateway.count_points(call.tenant, points)
    answer = _IngestAnswer(accepted=points, metrics=len(batches))  # as IngestResponse
    return Response(_json.encode(answer), status_code=202, media_type="application/json")


class _IngestAnswer(msgspec.Struct):
    """IngestResponse's shape, encoded without building a pydantic model per request."""

    accepted: int
    metrics: int


class _FastMetric(msgspec.Struct, forbid_unknown_fields=True):
    metric: str
    points: list[tuple[float, float]]


class _FastRequest(msgspec.Struct, forbid_unknown_fields=True):
    metrics: list[_FastMetric]


_fast_json = msgspec.json.Decoder(_FastRequest)
_fast_msgpack = msgspec.msgpack.Decoder(_FastRequest)


def _fast_path(
    decoder: "msgspec.json.Decoder[_FastRequest] | msgspec.msgpack.Decoder[_FastRequest]",
    raw: bytes,
    now: float,
) -> dict[str, Points] | None:
    """The common, valid request of [ts, value] pairs, decoded straight into floats and
    checked with numpy. Anything else (or anything wrong) goes the precise slow path, which
    names every bad field."""
    try:
        request = decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    pairs: dict[str, list[Pairs]] = {}
    for m in request.metrics:
        if not m.points or not is_valid_metric(m.metric):
            return None
        pairs.setdefault(m.metric, []).append(m.points)
    if not pairs:
        return None
    batches = {metric: _as_points(*parts) for metric, parts in pairs.items()}
    latest = now + MAX_FUTURE_S
    for points in batches.values():
        ts = points[:, 0]
        if not (np.isfinite(points[:, 1]).all() and ts.min() >= MIN_TS and ts.max() <= latest):
            return None
    return batches


def _as_points(*parts: Pairs) -> Points:
    """[ts, value] rows; fromiter over the flattened pairs is C speed, where building an
    array from a list of tuples inspects every tuple."""
    count = 2 * sum(map(len, parts))
    flat = np.fromiter(chain.from_iterable(chain.from_iterable(parts)), np.float64, count)
    return flat.reshape(-1, 2)


def _decode(decode: Any, raw: bytes, what: str) -> Any:
    if not raw:
        raise ApiError(400, "malformed_body", "request body is empty")
    try:
        return decode(raw)
    except msgspec.DecodeError as exc:
        raise ApiError(400, "malformed_body", f"body is not valid {what}: {exc}") from None


def _parse_document(doc: Any, now: float) -> dict[str, Points]:
    try:
        request = IngestRequest.model_validate(doc)
    except ValidationError as exc:
        raise invalid(validation_details(exc), "body is invalid") from None
    batches: dict[str, Pairs] = {}
    errors: Errors = []
    for i, m in enumerate(request.metrics):
        pairs = batches.setdefault(m.metric, [])
        for j, point in enumerate(m.points):
            _add_point(point, f"metrics[{i}].points[{j}]", now, pairs, errors)
    if errors:
        raise invalid(errors[:MAX_ERRORS], f"{len(errors)} invalid points; nothing was ingested")
    return {metric: _as_points(pairs) for metric, pairs in batches.items() if pairs}


def _parse_ndjson(raw: bytes, now: float) -> dict[str, Points]:
    """Each line: {"metric", "points": [...]} or {"metric", "ts"?, "value"}."""
    metrics: list[Any] = []
    errors: Errors = []
    for n, line in enumerate(raw.splitlines()):
        if not line.strip():
            continue
        try:
            doc = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            errors.append({"path": f"line[{n}]", "message": f"not valid JSON: {exc}"})
            continue
        if isinstance(doc, dict) and "points" not in doc and "value" in doc:
            point = {k: doc[k] for k in ("ts", "value") if k in doc}
            doc = {"metric": doc.get("metric"), "points": [point]}
        metrics.append(doc)
    if errors:
        raise invalid(errors[:MAX_ERRORS], "body is invalid")
    if not metrics:
        raise ApiError(400, "malformed_body", "request body has no lines")
    return _parse_document({"metrics": metrics}, now)


def _add_point(point: Any, path: str, now: float, out: Pairs, errors: Errors) -> None:
    if isinstance(point, list) and len(point) == 2:
        (raw_ts, value), ts_path, value_path = point, f"{path}[0]", f"{path}[1]"
    elif isinstance(point, dict) and "value" in point and set(point) <= {"ts", "value"}:
        raw_ts, value = point.get("ts"), point["value"]
        ts_path, value_path = f"{path}.ts", f"{path}.value"
    else:
        errors.append({"path": path, "message": 'expected [ts, value] or {"ts": …, "value": …}'})
        return
    if not _is_number(value):
        errors.append({"path": value_path, "message": "not a number"})
        return
    number = _finite(value)
    if number is None:
        errors.append({"path": value_path, "message": "not a finite number"})
        return
    ts = _timestamp(raw_ts, now, ts_path, errors)
    if ts is not None:
        out.append((ts, number))


def _timestamp(raw: Any, now: float, path: str, errors: Errors) -> float | None:
    if raw is None:
        return now
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            errors.append({"path": path, "message": "not an RFC 3339 timestamp"})
            return None
        if parsed.tzinfo is None:
            errors.append({"path": path, "message": "RFC 3339 timestamp without UTC offset"})
            return None
        ts = parsed.timestamp()
    elif _is_number(raw):
        ts = _finite(raw) or math.inf
    else:
        errors.append({"path": path, "message": "not a number or RFC 3339 string"})
        return None
    if not math.isfinite(ts) or not MIN_TS <= ts <= now + MAX_FUTURE_S:
        hint = " (milliseconds? ts is in seconds)" if ts > now * 100 else ""
        errors.append({"path": path, "message": f"timestamp out of range{hint}"})
        return None
    return ts


def _finite(x: float) -> float | None:
    try:
        f = float(x)
    except OverflowError:  # a JSON integer beyond float range
        return None
    return f if math.isfinite(f) else None


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _chunks(points: Points, size: int) -> Iterator[Points]:
    return (points[start : start + size] for start in range(0, len(points), size))


async def _publish(call: Call, batches: dict[str, Points]) -> None:
    gateway = call.gateway
    limit = gateway.settings.max_points_per_message
    headers = {"Content-Type": MSGPACK}
    inject(headers)  # the request's trace context travels with the events
    messages = (
        (
            gateway.subjects.ingest(call.tenant, metric),
            encode_columns(chunk[:, 0], chunk[:, 1]),  # the cheapest payload to decode
            dict(headers),
        )
        for metric, points in batches.items()
        for chunk in _chunks(points, limit)
    )
    try:
        await publish_all(gateway.nc, messages, timeout=10.0)
    except Exception as exc:
        raise ApiError(503, "unavailable", f"events could not be stored: {exc!r}") from None


ENDPOINTS = [
    Endpoint("POST", "/v1/ingest", ingest, "Ingest points of many metrics", "ingest",
             Permission.INGEST, body=IngestRequest, response=IngestResponse, status=202,
             parse_body=False),
]  # fmt: skip
