"""Versioned records stored in LMDB. A change of shape bumps the version and adds an upgrade
function to UPGRADES; new fields get defaults so old records still decode."""

from collections.abc import Callable
from typing import Any

import msgspec

from driftlock.detect.state import TABLES, DetectorState, packed

ACTOR_VERSION = 2
META_VERSION = 1


class ActorRecord(msgspec.Struct, kw_only=True):
    """Everything a stream actor owns; nothing in it depends on stream sequence numbers, so
    two runs over the same events end with equal records."""

    version: int = ACTOR_VERSION
    detector: DetectorState = msgspec.field(default_factory=DetectorState)
    points: int = 0
    anomalies: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0
    last_value: float = 0.0


class PartitionMeta(msgspec.Struct, kw_only=True):
    version: int = META_VERSION
    last_applied_seq: int = 0


Upgrade = Callable[[dict[str, Any]], dict[str, Any]]


def _tables_in_one_buffer(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept each of the detector's tables as a field of its own."""
    detector = dict(raw.get("detector") or {})
    tables = [detector.pop(name, b"") for name in TABLES]
    if any(tables):
        detector["tables"], detector["ends"] = packed(tables)
    return {**raw, "detector": detector}


UPGRADES: dict[int, Upgrade] = {1: _tables_in_one_buffer}
"""Maps version v to a function turning a v record (as builtins) into a v+1 record."""

_encoder = msgspec.msgpack.Encoder()
_actor_decoder = msgspec.msgpack.Decoder(ActorRecord)
_meta_decoder = msgspec.msgpack.Decoder(PartitionMeta)
_raw_decoder = msgspec.msgpack.Decoder(dict[str, Any])


def encode(record: ActorRecord | PartitionMeta) -> bytes:
    return _encoder.encode(record)


def decode_actor(data: bytes) -> ActorRecord:
    try:
        record = _actor_decoder.decode(data)
    except msgspec.ValidationError:
        pass  # another version's shape: upgraded (or refused) below
    else:
        if record.version == ACTOR_VERSION:
            return record
    return msgspec.convert(_upgrade(_raw_decoder.decode(data), ACTOR_VERSION), ActorRecord)


def decode_meta(data: bytes) -> PartitionMeta:
    return _meta_decoder.decode(data)


def _upgrade(raw: dict[str, Any], target: int) -> dict[str, Any]:
    version = int(raw.get("version", 1))
    if version > target:
        raise ValueError(f"record version {version} is newer than this DriftLock ({target})")
    while version < target:
        if version not in UPGRADES:
            raise ValueError(f"no upgrade from record version {version} to {version + 1}")
        raw = UPGRADES[version](raw)
        version += 1
        raw["version"] = version
    return raw
