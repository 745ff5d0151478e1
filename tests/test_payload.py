"""decode_points: every accepted shape in JSON and msgpack, and a precise reason, with the
point's index, for everything it refuses."""

from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import pytest

from driftlock.wire.messages import RejectReason
from driftlock.wire.payload import MAX_FUTURE_S, MIN_TS, DecodedPoints, PointError, decode_points

NOW = 1_732_550_400.0
"""2024-11-25T16:00:00Z: the message's stored time in every test."""
LIMIT = 1000

Encoder = Callable[[Any], bytes]
FORMATS: list[tuple[Encoder, str | None]] = [
    (msgspec.json.encode, None),
    (msgspec.msgpack.encode, "application/msgpack"),
]
FORMAT_IDS = ["json", "msgpack"]
R = RejectReason


def decode(data: bytes, content_type: str | None = None, *, limit: int = LIMIT) -> DecodedPoints:
    return decode_points(data, content_type, now=NOW, max_points=limit)


def assert_points(
    got: DecodedPoints, ts: list[float], values: list[float], index: list[int]
) -> None:
    assert got.ts.dtype == np.float64
    assert got.values.dtype == np.float64
    assert got.index.dtype == np.int32
    np.testing.assert_array_equal(got.ts, np.array(ts, dtype=np.float64))
    np.testing.assert_array_equal(got.values, np.array(values, dtype=np.float64))
    np.testing.assert_array_equal(got.index, np.array(index, dtype=np.int32))


def assert_whole_rejected(got: DecodedPoints, reason: RejectReason) -> PointError:
    assert_points(got, [], [], [])
    assert len(got.errors) == 1
    error = got.errors[0]
    assert (error.index, error.reason) == (None, reason)
    return error


def only_error(got: DecodedPoints, reason: RejectReason) -> PointError:
    """A single point (index 0) refused for `reason`, nothing kept."""
    assert_points(got, [], [], [])
    assert [(e.index, e.reason) for e in got.errors] == [(0, reason)]
    return got.errors[0]


# -- accepted shapes --

ACCEPTED: list[tuple[Any, list[float], list[float]]] = [
    ({"ts": NOW - 60, "value": 0.5}, [NOW - 60], [0.5]),
    ([NOW - 60, 0.5], [NOW - 60], [0.5]),
    (
        [{"ts": NOW - 60, "value": 0.5}, {"ts": NOW - 30, "value": -1.5}],
        [NOW - 60, NOW - 30],
        [0.5, -1.5],
    ),
    ([[NOW - 60, 0.5], [NOW - 30, -1.5], [NOW, 2.0]], [NOW - 60, NOW - 30, NOW], [0.5, -1.5, 2.0]),
    ([[1_732_550_000, 3]], [1_732_550_000.0], [3.0]),  # integers become floats
    (0.5, [NOW], [0.5]),
    (7, [NOW], [7.0]),
    ({"value": 0.5}, [NOW], [0.5]),
    ({"ts": None, "value": 0.5}, [NOW], [0.5]),
    ([None, 0.5], [NOW], [0.5]),
    ([{"value": 1.0}, [NOW - 5, 2.0]], [NOW, NOW - 5], [1.0, 2.0]),
]
ACCEPTED_IDS = [
    "object",
    "pair",
    "list-of-objects",
    "list-of-pairs",
    "integer-pairs",
    "bare-float",
    "bare-int",
    "object-without-ts",
    "object-null-ts",
    "pair-null-ts",
    "mixed-object-and-pair",
]


@pytest.mark.parametrize(("encode", "content_type"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(("payload", "ts", "values"), ACCEPTED, ids=ACCEPTED_IDS)
def test_accepted_shapes(
    encode: Encoder,
    content_type: str | None,
    payload: Any,
    ts: list[float],
    values: list[float],
) -> None:
    got = decode(encode(payload), content_type)
    assert got.errors == []
    assert_points(got, ts, values, list(range(len(values))))


@pytest.mark.parametrize(("encode", "content_type"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("2024-11-25T16:00:00Z", 1_732_550_400.0),
        ("2024-11-25T16:00:00+00:00", 1_732_550_400.0),
        ("2024-11-25T16:00:00+02:00", 1_732_550_400.0 - 7200),
        ("2024-11-25T13:30:00-02:30", 1_732_550_400.0),
        ("2024-11-25T15:59:59.250Z", 1_732_550_399.25),
    ],
)
def test_rfc3339_timestamps(
    encode: Encoder, content_type: str | None, text: str, epoch: float
) -> None:
    for payload in ({"ts": text, "value": 1.0}, [text, 1.0]):
        got = decode(encode(payload), content_type)
        assert got.errors == []
        assert_points(got, [epoch], [1.0], [0])


@pytest.mark.parametrize(
    ("content_type", "encode"),
    [
        (None, msgspec.json.encode),
        ("", msgspec.json.encode),
        ("application/json", msgspec.json.encode),
        ("application/json; charset=utf-8", msgspec.json.encode),
        ("Application/JSON", msgspec.json.encode),
        ("text/json", msgspec.json.encode),
        ("application/msgpack", msgspec.msgpack.encode),
        ("application/x-msgpack", msgspec.msgpack.encode),
        ("application/vnd.msgpack", msgspec.msgpack.encode),
    ],
)
def test_supported_content_types(content_type: str | None, encode: Encoder) -> None:
    got = decode(encode([[NOW, 1.0], {"ts": NOW - 1, "value": 2.0}]), content_type)
    assert got.errors == []
    assert_points(got, [NOW, NOW - 1], [1.0, 2.0], [0, 1])


@pytest.mark.parametrize("content_type", ["text/plain", "application/cbor", "json"])
def test_unsupported_content_type(content_type: str) -> None:
    got = decode(b'{"value": 1}', content_type)
    error = assert_whole_rejected(got, R.UNSUPPORTED_CONTENT_TYPE)
    assert repr(content_type) in error.detail


def test_content_type_decides_the_format() -> None:
    """msgpack bytes labelled as JSON (the default) are not guessed at."""
    assert_whole_rejected(decode(msgspec.msgpack.encode({"value": 1.0})), R.MALFORMED_PAYLOAD)
    assert_whole_rejected(decode(b'{"value": 1.0}', "application/msgpack"), R.MALFORMED_PAYLOAD)


# -- whole-message rejects --


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"\xff\xfe\x00garbage", None),
        (b"not json", None),
        (b"[[1732550400, 1.0]", None),
        (b'{"ts": 1732550400, "value": ', None),
        (b"[1.0] trailing", None),
        (b"", None),
        (b"1e400", None),  # JSON has no infinity: out-of-range literals are malformed
        (b"\xc1", "application/msgpack"),  # never-used msgpack opcode
        (b"\x92\x01", "application/msgpack"),  # array of 2 with 1 element
        (b"\x01\x02", "application/msgpack"),  # trailing bytes
        (b"", "application/msgpack"),
    ],
)
def test_malformed_payload(data: bytes, content_type: str | None) -> None:
    error = assert_whole_rejected(decode(data, content_type), R.MALFORMED_PAYLOAD)
    assert error.detail.startswith("not valid application/")


@pytest.mark.parametrize(("encode", "content_type"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("payload", ["0.5", True, None], ids=["string", "bool", "null"])
def test_invalid_top_level_shape(encode: Encoder, content_type: str | None, payload: Any) -> None:
    error = assert_whole_rejected(decode(encode(payload), content_type), R.INVALID_SHAPE)
    assert "expected" in error.detail


@pytest.mark.parametrize(("encode", "content_type"), FORMATS, ids=FORMAT_IDS)
def test_empty_batch(encode: Encoder, content_type: str | None) -> None:
    error = assert_whole_rejected(decode(encode([]), content_type), R.INVALID_SHAPE)
    assert error.detail == "empty batch"


@pytest.mark.parametrize(("encode", "content_type"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(
    "batch",
    [
        [[NOW, float(i)] for i in range(11)],  # fast path
        [{"ts": NOW, "value": float(i)} for i in range(11)],  # general path
    ],
    ids=["pairs", "objects"],
)
def test_batch_too_large(encode: Encoder, content_type: str | None, batch: list[Any]) -> None:
    error = assert_whole_rejected(decode(encode(batch), content_type, limit=10), R.BATCH_TOO_LARGE)
    assert error.detail == "11 points > limit 10"
    within = decode(encode(batch[:10]), content_type, limit=10)
    assert within.errors == []
    assert len(within.values) == 10


# -- per-point rejects --


@pytest.mark.parametrize(("encode", "content_type"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({"ts": NOW}, 'point object without "value"'),
        ({"ts": NOW, "value": 1.0, "unit": "ms", "host": "a"}, "unknown fields: host, unit"),
        ([[NOW, 1.0, 2.0]], None),
        ([[NOW, [1.0]]], None),
        (["a", "b", "c"], None),
    ],
    ids=["no-value", "unknown-fields", "triple", "nested-value", "strings"],
)
def test_invalid_point_shape(
    encode: Encoder, content_type: str | None, payload: Any, detail: str | None
) -> None:
    got = decode(encode(payload), content_type)
    assert_points(got, [], [], [])
    assert {e.reason for e in got.errors} == {R.INVALID_SHAPE}
    assert [e.index for e in got.errors] == list(range(len(got.errors)))
    if detail is not None:
        assert got.errors[0].detail == detail


@pytest.mark.parametrize(("encode", "content_type"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(
    "payload",
    [
        {"value": "0.5"},
        {"ts": NOW, "value": True},
        {"ts": NOW, "value": False},
        {"ts": NOW, "value": None},
        [NOW, "0.5"],
        [NOW, True],
        [NOW, None],
    ],
)
def test_not_a_number(encode: Encoder, content_type: str | None, payload: Any) -> None:
    error = only_error(decode(encode(payload), content_type), R.NOT_A_NUMBER)
    assert error.detail.startswith("value ")


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ([[NOW, float("nan")]], "value nan"),
        ([[NOW, float("inf")]], "value inf"),
        ({"ts": NOW, "value": float("-inf")}, "value -inf"),
        (float("nan"), "value nan"),
        ([[float("inf"), 1.0]], "ts inf"),
        ({"ts": float("-inf"), "value": 1.0}, "ts -inf"),
        ({"ts": float("nan"), "value": 1.0}, "ts nan"),
        ([float("nan"), float("nan")], "value nan"),  # the value is reported first
    ],
)
def test_non_finite_msgpack(payload: Any, detail: str) -> None:
    error = only_error(decode(msgspec.msgpack.encode(payload), "application/msgpack"), R.NON_FINITE)
    assert error.detail == detail


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b'{"value": 1' + b"0" * 400 + b"}", "value inf"),
        (b'{"value": -1' + b"0" * 400 + b"}", "value -inf"),
        (b'{"ts": 1' + b"0" * 400 + b', "value": 1}', "ts inf"),
        (b"[1" + b"0" * 400 + b", 1]", "ts inf"),
        (b"1" + b"0" * 400, "value inf"),
    ],
    ids=["value", "negative-value", "object-ts", "pair-ts", "bare"],
)
def test_json_integer_beyond_float_range_is_non_finite(data: bytes, detail: str) -> None:
    """Regression: such integers used to raise OverflowError out of decode_points."""
    error = only_error(decode(data), R.NON_FINITE)
    assert error.detail == detail


@pytest.mark.parametrize(("encode", "content_type"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(
    ("raw_ts", "detail"),
    [
        ("yesterday", "ts 'yesterday': not RFC 3339"),
        ("2024-11-25T16:00:00", "ts '2024-11-25T16:00:00': missing UTC offset"),
        ("2024-11-25", "ts '2024-11-25': missing UTC offset"),
        ({"seconds": 1}, "ts {'seconds': 1}"),
        (True, "ts True"),
        (False, "ts False"),
        ([NOW], f"ts [{NOW}]"),
    ],
)
def test_invalid_timestamp(
    encode: Encoder, content_type: str | None, raw_ts: Any, detail: str
) -> None:
    error = only_error(
        decode(encode({"ts": raw_ts, "value": 1.0}), content_type), R.INVALID_TIMESTAMP
    )
    assert error.detail == detail


@pytest.mark.parametrize(("encode", "content_type"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(
    ("raw_ts", "milliseconds"),
    [
        (MIN_TS - 1, False),
        (0.0, False),
        (-1.0, False),
        ("1999-12-31T23:59:59Z", False),
        (NOW + MAX_FUTURE_S + 0.5, False),
        (NOW + 30 * MAX_FUTURE_S, False),
        (NOW * 1000, True),
    ],
)
def test_timestamp_out_of_range(
    encode: Encoder, content_type: str | None, raw_ts: float | str, milliseconds: bool
) -> None:
    for payload in ({"ts": raw_ts, "value": 1.0}, [[raw_ts, 1.0]]):
        error = only_error(decode(encode(payload), content_type), R.TIMESTAMP_OUT_OF_RANGE)
        assert ("milliseconds" in error.detail) is milliseconds


@pytest.mark.parametrize(("encode", "content_type"), FORMATS, ids=FORMAT_IDS)
def test_timestamp_range_bounds_are_inclusive(encode: Encoder, content_type: str | None) -> None:
    got = decode(encode([[MIN_TS, 1.0], [NOW + MAX_FUTURE_S, 2.0]]), content_type)
    assert got.errors == []
    assert_points(got, [MIN_TS, NOW + MAX_FUTURE_S], [1.0, 2.0], [0, 1])


# -- mixed batches --


@pytest.mark.parametrize(("encode", "content_type"), FORMATS, ids=FORMAT_IDS)
def test_mixed_batch_keeps_good_points_with_their_indexes(
    encode: Encoder, content_type: str | None
) -> None:
    batch: list[Any] = [
        {"ts": NOW - 3, "value": 1.0},  # 0 ok
        {"ts": NOW - 2, "value": "x"},  # 1 not a number
        [NOW - 2, 2.0],  # 2 ok
        {"value": 3.0},  # 3 ok, ts = now
        [NOW * 1000, 4.0],  # 4 out of range (milliseconds)
        "five",  # 5 invalid shape
        {"ts": "2024-11-25T16:00:00+02:00", "value": 6.0},  # 6 ok
        {"ts": 100.0, "value": 7.0},  # 7 out of range
        8.5,  # 8 invalid shape: a bare number only stands alone
        {"ts": "soon", "value": 9.0},  # 9 invalid timestamp
        {"ts": NOW, "value": 10.0, "extra": 1},  # 10 invalid shape
    ]
    got = decode(encode(batch), content_type)
    assert_points(
        got,
        [NOW - 3, NOW - 2, NOW, NOW - 7200],
        [1.0, 2.0, 3.0, 6.0],
        [0, 2, 3, 6],
    )
    # Range errors are found after the per-point ones, yet come out sorted by index.
    assert [(e.index, e.reason) for e in got.errors] == [
        (1, R.NOT_A_NUMBER),
        (4, R.TIMESTAMP_OUT_OF_RANGE),
        (5, R.INVALID_SHAPE),
        (7, R.TIMESTAMP_OUT_OF_RANGE),
        (8, R.INVALID_SHAPE),
        (9, R.INVALID_TIMESTAMP),
        (10, R.INVALID_SHAPE),
    ]
    assert "milliseconds" in got.errors[1].detail
    assert "milliseconds" not in got.errors[3].detail


def test_mixed_batch_of_pairs_msgpack_fast_path() -> None:
    batch = [
        [NOW - 4, 1.0],
        [NOW - 3, float("nan")],
        [float("inf"), 2.0],
        [NOW - 2, 3.0],
        [1.0, 4.0],
        [NOW - 1, float("-inf")],
        [NOW, 5.0],
    ]
    got = decode(msgspec.msgpack.encode(batch), "application/msgpack")
    assert_points(got, [NOW - 4, NOW - 2, NOW], [1.0, 3.0, 5.0], [0, 3, 6])
    assert [(e.index, e.reason, e.detail.split(" ")[0]) for e in got.errors] == [
        (1, R.NON_FINITE, "value"),
        (2, R.NON_FINITE, "ts"),
        (4, R.TIMESTAMP_OUT_OF_RANGE, "ts"),
        (5, R.NON_FINITE, "value"),
    ]


@pytest.mark.parametrize(("encode", "content_type"), FORMATS, ids=FORMAT_IDS)
def test_batch_where_every_point_is_bad(encode: Encoder, content_type: str | None) -> None:
    got = decode(encode([{"ts": NOW}, [NOW, "1"], {"ts": 5.0, "value": 1.0}]), content_type)
    assert_points(got, [], [], [])
    assert [(e.index, e.reason) for e in got.errors] == [
        (0, R.INVALID_SHAPE),
        (1, R.NOT_A_NUMBER),
        (2, R.TIMESTAMP_OUT_OF_RANGE),
    ]


def test_bare_numbers_inside_a_batch_are_ambiguous_and_rejected() -> None:
    got = decode(b"[1.5, 2.5, 3.5]")
    assert len(got.values) == 0
    assert [(e.index, e.reason) for e in got.errors] == [(i, R.INVALID_SHAPE) for i in range(3)]
    assert "bare number" in got.errors[0].detail


def columnar(ts: list[float], values: list[float]) -> bytes:
    return msgspec.msgpack.encode(
        {"ts": np.array(ts, "<f8").tobytes(), "values": np.array(values, "<f8").tobytes()}
    )


def test_columnar_msgpack_batch_decodes_to_the_same_arrays_as_pairs() -> None:
    ts, values = [NOW - 100 + i for i in range(50)], [float(i) * 0.5 for i in range(50)]
    fast = decode_points(columnar(ts, values), "application/msgpack", now=NOW, max_points=100)
    pairs = msgspec.msgpack.encode([[t, v] for t, v in zip(ts, values, strict=True)])
    slow = decode_points(pairs, "application/msgpack", now=NOW, max_points=100)
    assert fast.errors == [] and np.array_equal(fast.ts, slow.ts)
    assert np.array_equal(fast.values, slow.values) and np.array_equal(fast.index, slow.index)


def test_point_indexes_are_shared_read_only_and_grow_with_the_largest_batch() -> None:
    """The indexes come from one array kept for every message: no message may change
    another's, and a batch larger than any before still gets all of its own."""
    small = decode_points(columnar([NOW, NOW], [1.0, 2.0]), "application/msgpack", now=NOW,
                          max_points=100_000)  # fmt: skip
    n = 70_000
    large = decode_points(
        columnar([NOW - 1] * n, [0.0] * n), "application/msgpack", now=NOW, max_points=100_000
    )
    assert small.index.tolist() == [0, 1]
    assert np.array_equal(large.index, np.arange(n)) and large.index.dtype == np.int32
    with pytest.raises(ValueError, match="read-only"):
        large.index[0] = 5


@pytest.mark.parametrize(
    ("ts", "value", "reason"),
    [
        (float("nan"), 1.0, RejectReason.NON_FINITE),
        (NOW, float("inf"), RejectReason.NON_FINITE),
        (NOW, float("nan"), RejectReason.NON_FINITE),
        (MIN_TS - 1, 1.0, RejectReason.TIMESTAMP_OUT_OF_RANGE),
        (NOW + MAX_FUTURE_S + 1, 1.0, RejectReason.TIMESTAMP_OUT_OF_RANGE),
    ],
)
@pytest.mark.parametrize("at", [0, 63])
def test_one_bad_point_anywhere_in_a_large_batch_is_found(
    ts: float, value: float, reason: RejectReason, at: int
) -> None:
    """The all-good check is one compiled pass: a bad first or last point must fail it."""
    times, values = [NOW - 64 + j for j in range(64)], [1.0] * 64
    times[at], values[at] = ts, value
    got = decode_points(columnar(times, values), "application/msgpack", now=NOW, max_points=100)
    assert [(e.index, e.reason) for e in got.errors] == [(at, reason)]
    assert len(got.values) == 63 and at not in got.index.tolist()


def test_columnar_batch_rejects_bad_points_by_index_and_bad_shapes_whole() -> None:
    got = decode_points(
        columnar([NOW, NOW - 100 + 1, 1.0], [1.0, float("nan"), 2.0]),
        "application/msgpack",
        now=NOW,
        max_points=100,
    )
    assert got.values.tolist() == [1.0]
    assert [(e.index, e.reason) for e in got.errors] == [
        (1, RejectReason.NON_FINITE),
        (2, RejectReason.TIMESTAMP_OUT_OF_RANGE),
    ]
    uneven = msgspec.msgpack.encode({"ts": b"\0" * 16, "values": b"\0" * 8})
    got = decode_points(uneven, "application/msgpack", now=NOW, max_points=100)
    assert got.errors[0].index is None and "equal length" in got.errors[0].detail
    five = columnar([NOW] * 5, [1.0] * 5)
    big = decode_points(five, "application/msgpack", now=NOW, max_points=4)
    assert big.errors[0].reason is RejectReason.BATCH_TOO_LARGE
