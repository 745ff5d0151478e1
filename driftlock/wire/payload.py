"""Decoding of producer payloads (DESIGN §2) into arrays, with a precise reason for every
point or message that cannot be used.

Accepted shapes, as JSON (default) or msgpack (`Content-Type: application/msgpack`):
`{"ts": 1732550400.0, "value": 0.93}`, `[ts, value]`, a list of either, or a bare number.
The fastest is msgpack's columnar batch `{"ts": <bin>, "values": <bin>}`, both raw
little-endian float64 arrays of equal length: it decodes with no per-point work at all.
`ts` is Unix seconds or an RFC 3339 string with an offset; a missing `ts` means the time the
stream stored the message, which keeps replays deterministic.
"""

import math
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from driftlock.detect.jit import jit_holding_gil
from driftlock.wire.messages import RejectReason

MIN_TS = 946_684_800.0
"""2000-01-01T00:00:00Z: earlier timestamps are almost always a unit or clock bug."""
MAX_FUTURE_S = 86_400.0
"""How far past the message's stored time a point may lie."""

JSON = "application/json"
MSGPACK = "application/msgpack"
_CONTENT_TYPES = {
    None: JSON,
    "": JSON,
    JSON: JSON,
    "text/json": JSON,
    MSGPACK: MSGPACK,
    "application/x-msgpack": MSGPACK,
    "application/vnd.msgpack": MSGPACK,
}

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int32]


@dataclass(frozen=True, slots=True)
class PointError:
    index: int | None
    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class DecodedPoints:
    ts: FloatArray
    values: FloatArray
    index: IndexArray
    errors: list[PointError]


_Pairs = list[tuple[float, float]]
_json_pairs = msgspec.json.Decoder(_Pairs)
_msgpack_pairs = msgspec.msgpack.Decoder(_Pairs)
_json_pair = msgspec.json.Decoder(tuple[float, float])
_msgpack_pair = msgspec.msgpack.Decoder(tuple[float, float])
_MSGPACK_ARRAY = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])
_json_any = msgspec.json.Decoder()
_msgpack_any = msgspec.msgpack.Decoder()
_EMPTY_F = np.empty(0, dtype=np.float64)
_MSGPACK_MAP = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])


class _Columns(msgspec.Struct, forbid_unknown_fields=True):
    ts: bytes
    values: bytes


_msgpack_columns = msgspec.msgpack.Decoder(_Columns)
_msgpack_encoder = msgspec.msgpack.Encoder()
_EMPTY_I = np.empty(0, dtype=np.int32)
_positions = np.arange(0, dtype=np.int32)


def _indexes(n: int) -> IndexArray:
    """0 … n-1, a read-only view of one array kept for every message: numpy's arange
    releases the GIL to fill, and on a node whose detection threads hold it, getting it back
    cost ~110 µs a message (measured), many times the decode itself."""
    global _positions  # noqa: PLW0603 - grows to the largest batch seen, once
    if n > len(_positions):
        grown = np.arange(max(n, 2 * len(_positions)), dtype=np.int32)
        grown.flags.writeable = False
        _positions = grown
    return _positions[:n]


def encode_columns(ts: FloatArray, values: FloatArray) -> bytes:
    """The columnar batch of these points, as msgpack (send it as application/msgpack)."""
    return _msgpack_encoder.encode(
        _Columns(ts.astype("<f8", copy=False).tobytes(), values.astype("<f8", copy=False).tobytes())
    )


def normalise_content_type(value: str | None) -> str | None:
    """The canonical content type, or None when DriftLock does not read it."""
    if value is not None:
        value = value.split(";", 1)[0].strip().lower()
    return _CONTENT_TYPES.get(value)


def decode_points(
    data: bytes, content_type: str | None, *, now: float, max_points: int
) -> DecodedPoints:
    """Decode one message. `now` is the message's stored time in Unix seconds."""
    canonical = normalise_content_type(content_type)
    if canonical is None:
        return _whole(RejectReason.UNSUPPORTED_CONTENT_TYPE, f"content type {content_type!r}")
    if canonical == MSGPACK and data[:1] and data[0] in _MSGPACK_MAP:
        columns = _columnar(data, now, max_points)
        if columns is not None:
            return columns
    if _looks_like_one_pair(data, canonical):
        one = _one_pair(data, canonical, now)
        if one is not None:
            return one
    pairs = _fast_pairs(data, canonical)
    if pairs is not None:
        if len(pairs) > max_points:
            return _too_large(len(pairs), max_points)
        if not pairs:
            return _whole(RejectReason.INVALID_SHAPE, "empty batch")
        arr = np.array(pairs, dtype=np.float64).reshape(-1, 2)
        index = _indexes(len(pairs))
        return _check_ranges(arr[:, 0].copy(), arr[:, 1].copy(), index, [], now)
    try:
        raw = (_json_any if canonical == JSON else _msgpack_any).decode(data)
    except msgspec.DecodeError as exc:
        return _whole(RejectReason.MALFORMED_PAYLOAD, f"not valid {canonical}: {exc}")
    items = _as_items(raw)
    if items is None:
        return _whole(RejectReason.INVALID_SHAPE, _shape_help(raw))
    if len(items) > max_points:
        return _too_large(len(items), max_points)
    if not items:
        return _whole(RejectReason.INVALID_SHAPE, "empty batch")
    return _decode_items(items, now)


def _columnar(data: bytes, now: float, max_points: int) -> DecodedPoints | None:
    """The columnar batch, or None when the message is another shape."""
    try:
        columns = _msgpack_columns.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if len(columns.ts) != len(columns.values) or len(columns.ts) % 8:
        return _whole(
            RejectReason.INVALID_SHAPE,
            f"columnar batch: ts ({len(columns.ts)} bytes) and values "
            f"({len(columns.values)} bytes) must be float64 arrays of equal length",
        )
    n = len(columns.ts) // 8
    if n > max_points:
        return _too_large(n, max_points)
    if n == 0:
        return _whole(RejectReason.INVALID_SHAPE, "empty batch")
    ts = np.frombuffer(columns.ts, dtype="<f8").astype(np.float64)
    values = np.frombuffer(columns.values, dtype="<f8").astype(np.float64)
    return _check_ranges(ts, values, _indexes(n), [], now)


def _looks_like_one_pair(data: bytes, content_type: str) -> bool:
    """`[ts, value]` rather than a list of points: an array whose first item is no array."""
    if content_type == JSON:
        head = data[:32].lstrip()
        return head[:1] == b"[" and head[1:].lstrip()[:1] not in (b"[", b"{")
    return data[:1] == b"\x92" and data[1:2] != b"" and data[1] not in _MSGPACK_ARRAY


def single_point(
    data: bytes, content_type: str | None, *, now: float
) -> tuple[float, float] | None:
    """The point of a single-point message `[ts, value]` (numeric ts, in range), as floats;
    None for any other message, which `decode_points` decodes or rejects with its reason.

    Most producers send one point per message, and the three one-element arrays of its
    `DecodedPoints` cost a node more than the decode (~3.5 µs of ~5.5): a partition worker
    gathers a stream's single points as floats and makes its arrays once."""
    canonical = normalise_content_type(content_type)
    if canonical is None or not _looks_like_one_pair(data, canonical):
        return None
    pair = _pair(data, canonical)
    if pair is None or not _in_range(pair[0], pair[1], now):
        return None
    return pair


def _pair(data: bytes, content_type: str) -> tuple[float, float] | None:
    try:
        ts, value = (_json_pair if content_type == JSON else _msgpack_pair).decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return ts, value


def _one_pair(data: bytes, content_type: str, now: float) -> DecodedPoints | None:
    """The single-point message `[ts, value]` with numeric ts, without a batch's machinery;
    None when it is not quite that."""
    pair = _pair(data, content_type)
    if pair is None:
        return None
    ts, value = pair
    if not _in_range(ts, value, now):
        return DecodedPoints(_EMPTY_F, _EMPTY_F, _EMPTY_I, [_range_error(0, ts, value, now)])
    return one_point(ts, value)


def one_point(ts: float, value: float) -> DecodedPoints:
    """A single point that passed `single_point`'s checks, as a batch of one."""
    return DecodedPoints(np.array([ts]), np.array([value]), np.zeros(1, np.int32), [])


def _fast_pairs(data: bytes, content_type: str) -> _Pairs | None:
    """The batch-of-pairs shape decoded straight into floats: the fast path."""
    try:
        return (_json_pairs if content_type == JSON else _msgpack_pairs).decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _as_items(raw: Any) -> list[Any] | None:
    if _is_number(raw):
        return [{"value": raw}]
    if isinstance(raw, dict) or _is_pair(raw):
        return [raw]
    if isinstance(raw, list):
        return raw
    return None


def _decode_items(items: list[Any], now: float) -> DecodedPoints:
    """Point by point, in plain Python: these messages are small, where numpy's per-call
    overhead would cost more than the checks themselves."""
    ts: list[float] = []
    values: list[float] = []
    kept: list[int] = []
    errors: list[PointError] = []
    for i, item in enumerate(items):
        point = _one_point(item, now)
        if isinstance(point, PointError):
            errors.append(replace(point, index=i))
        elif not _in_range(*point, now):
            errors.append(_range_error(i, *point, now))
        else:
            ts.append(point[0])
            values.append(point[1])
            kept.append(i)
    return DecodedPoints(
        np.array(ts, dtype=np.float64),
        np.array(values, dtype=np.float64),
        np.array(kept, dtype=np.int32),
        errors,
    )


def _in_range(ts: float, value: float, now: float) -> bool:
    return math.isfinite(value) and MIN_TS <= ts <= now + MAX_FUTURE_S


def _one_point(item: Any, now: float) -> tuple[float, float] | PointError:
    if _is_number(item):
        return PointError(
            None,
            RejectReason.INVALID_SHAPE,
            f'bare number {_show(item)} in a batch: send [ts, value] or {{"value": …}} '
            "(a bare number is accepted only as the whole message)",
        )
    if isinstance(item, dict):
        if "value" not in item:
            return PointError(None, RejectReason.INVALID_SHAPE, 'point object without "value"')
        unknown = set(item) - {"ts", "value"}
        if unknown:
            fields = ", ".join(sorted(map(str, unknown)))
            return PointError(None, RejectReason.INVALID_SHAPE, f"unknown fields: {fields}")
        raw_ts, raw_value = item.get("ts"), item["value"]
    elif _is_pair(item):
        raw_ts, raw_value = item
    else:
        return PointError(None, RejectReason.INVALID_SHAPE, _shape_help(item))
    if not _is_number(raw_value):
        return PointError(None, RejectReason.NOT_A_NUMBER, f"value {_show(raw_value)}")
    ts = _timestamp(raw_ts, now)
    if isinstance(ts, PointError):
        return ts
    return ts, _float(raw_value)


def _timestamp(raw: Any, now: float) -> float | PointError:
    if raw is None:
        return now
    if _is_number(raw):
        return _float(raw)
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            return PointError(
                None, RejectReason.INVALID_TIMESTAMP, f"ts {_show(raw)}: not RFC 3339"
            )
        if parsed.tzinfo is None:
            return PointError(
                None, RejectReason.INVALID_TIMESTAMP, f"ts {_show(raw)}: missing UTC offset"
            )
        return parsed.timestamp()
    return PointError(None, RejectReason.INVALID_TIMESTAMP, f"ts {_show(raw)}")


@jit_holding_gil
def _all_good(ts: FloatArray, values: FloatArray, earliest: float, latest: float) -> bool:
    """The common case, every point good, decided in one compiled pass: the three numpy
    reductions it replaces cost ~11 µs a message on this VM, this call ~1 µs.

    It keeps the GIL: a node's event loop calls it for every message, and letting the GIL go
    for a microsecond made the loop wait to get it back behind the LMDB writer's thread (in a
    profile of a paced load, 6.5% of the loop's time sat in this call, 0.7% with the GIL)."""
    for j in range(len(ts)):
        # Written so that a NaN timestamp fails too.
        if not (earliest <= ts[j] <= latest) or not math.isfinite(values[j]):
            return False
    return True


def _check_ranges(
    ts: FloatArray, values: FloatArray, index: IndexArray, errors: list[PointError], now: float
) -> DecodedPoints:
    """Vectorised checks on the decoded arrays: finite values, plausible timestamps."""
    if _all_good(ts, values, MIN_TS, now + MAX_FUTURE_S):
        return DecodedPoints(ts, values, index, errors)
    bad_value = ~np.isfinite(values)
    bad_ts = ~np.isfinite(ts) | (ts < MIN_TS) | (ts > now + MAX_FUTURE_S)
    bad = bad_value | bad_ts
    if not bad.any():
        return DecodedPoints(ts, values, index, errors)
    for j in np.flatnonzero(bad):
        errors.append(_range_error(int(index[j]), float(ts[j]), float(values[j]), now))
    errors.sort(key=lambda e: -1 if e.index is None else e.index)
    keep = ~bad
    return DecodedPoints(ts[keep], values[keep], index[keep], errors)


def _range_error(index: int, ts: float, value: float, now: float) -> PointError:
    if not math.isfinite(value):
        return PointError(index, RejectReason.NON_FINITE, f"value {value}")
    if not math.isfinite(ts):
        return PointError(index, RejectReason.NON_FINITE, f"ts {ts}")
    hint = " (milliseconds? ts is in seconds)" if ts > now * 100 else ""
    return PointError(
        index,
        RejectReason.TIMESTAMP_OUT_OF_RANGE,
        f"ts {ts} outside [{MIN_TS:.0f}, stored time + {MAX_FUTURE_S:.0f}s]{hint}",
    )


def _float(x: int | float) -> float:
    """float(x), but a JSON integer beyond the float range becomes ±inf (then rejected as
    NON_FINITE) instead of raising OverflowError out of the decoder."""
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_pair(x: Any) -> bool:
    return (
        isinstance(x, list)
        and len(x) == 2
        and not isinstance(x[0], list | dict)
        and not isinstance(x[1], list | dict)
    )


def _shape_help(raw: Any) -> str:
    return (
        f'got {_show(raw)}; expected {{"ts": …, "value": …}}, [ts, value], '
        "a list of either, or a number"
    )


def _show(x: Any, limit: int = 60) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _whole(reason: RejectReason, detail: str) -> DecodedPoints:
    return DecodedPoints(_EMPTY_F, _EMPTY_F, _EMPTY_I, [PointError(None, reason, detail)])


def _too_large(n: int, max_points: int) -> DecodedPoints:
    return _whole(RejectReason.BATCH_TOO_LARGE, f"{n} points > limit {max_points}")
