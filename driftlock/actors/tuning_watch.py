"""The tenants' detection settings on a node: a watched copy of the KV bucket
`<prefix>_detect` (one JSON document per tenant, written by the gateway), resolved per stream
when an actor applies a batch. Resolution is memoised per stream until the tenant's document
changes, so the hot path is two dict lookups."""

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from driftlock.detect.tuning import (
    BUCKET,
    DEFAULT_TUNING,
    DetectionConfig,
    StreamTuning,
    resolve,
)
from driftlock.gateway.kvcache import KvCache

MEMO_LIMIT = 100_000


async def detection_bucket(js: JetStreamContext, prefix: str) -> KeyValue:
    name = f"{prefix}_{BUCKET}"
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(bucket=name, storage=StorageType.FILE, history=1)
        )


class TuningWatch:
    def __init__(self, cache: KvCache[DetectionConfig]) -> None:
        self._cache = cache
        self._resolved: dict[tuple[str, str], tuple[DetectionConfig, StreamTuning]] = {}

    @classmethod
    async def start(cls, js: JetStreamContext, prefix: str) -> "TuningWatch":
        cache = KvCache(await detection_bucket(js, prefix), DetectionConfig)
        await cache.start()
        return cls(cache)

    async def stop(self) -> None:
        await self._cache.stop()

    def for_stream(self, tenant: str, metric: str) -> StreamTuning:
        config = self._cache.get(tenant)
        if config is None:
            return DEFAULT_TUNING
        known = self._resolved.get((tenant, metric))
        # A changed document is a new object: identity tells whether the memo is current.
        if known is not None and known[0] is config:
            return known[1]
        tuning = resolve(config, metric)
        if len(self._resolved) >= MEMO_LIMIT:
            self._resolved.clear()  # bounded: a node may hold a million streams
        self._resolved[(tenant, metric)] = (config, tuning)
        return tuning
