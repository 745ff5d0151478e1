"""Messages DriftLock publishes: anomalies on `dl.anomaly.…`, rejects on `dl.rejected.…`."""

from enum import StrEnum

import msgspec


class AnomalyKind(StrEnum):
    SPIKE = "spike"
    DIP = "dip"
    LEVEL_SHIFT = "level_shift"
    VARIANCE_CHANGE = "variance_change"
    TREND_CHANGE = "trend_change"
    FLATLINE = "flatline"
    MISSING_DATA = "missing_data"
    RULE = "rule"


class Anomaly(msgspec.Struct, frozen=True, kw_only=True):
    """One anomalous point. `id` is deterministic, so a replay never publishes it twice."""

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
    schema: int = 1


def anomaly_id(tenant: str, metric: str, seq: int, index: int) -> str:
    """`<tenant>.<metric>.<seq>.<index>`: the source message's stream sequence plus the point's
    index in that message, because one message may carry a batch with several anomalies."""
    return f"{tenant}.{metric}.{seq}.{index}"


class RejectReason(StrEnum):
    INVALID_SUBJECT = "invalid_subject"
    INVALID_TENANT = "invalid_tenant"
    INVALID_METRIC = "invalid_metric"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    MALFORMED_PAYLOAD = "malformed_payload"
    INVALID_SHAPE = "invalid_shape"
    NOT_A_NUMBER = "not_a_number"
    NON_FINITE = "non_finite"
    INVALID_TIMESTAMP = "invalid_timestamp"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    BATCH_TOO_LARGE = "batch_too_large"


class Reject(msgspec.Struct, frozen=True, kw_only=True):
    """What could not be ingested and why. `index` is the point's position in a batch, or
    null when the whole message was rejected; `seq` is its stream sequence (0 if never stored)."""

    tenant: str
    metric: str
    subject: str
    reason: RejectReason
    detail: str
    seq: int
    index: int | None = None
    rejected_at: float = 0.0
    schema: int = 1


json_encoder = msgspec.json.Encoder()
