"""The tenants' detection settings on a node: a watched copy of the KV bucket
`<prefix>_detect` (one JSON document per tenant, written by the gateway), resolved per stream
when an actor applies a batch. Resolution is memoised per stream until the tenant's document
changes, so the hot path is two dict lookups."""

from nats.js import JetStreamContext

from driftlock.bus.buckets import key_value
from driftlock.detect.tuning import (
    BUCKET,
    DEFAULT_TUNING,
    DetectionConfig,
    StreamTuning,
    resolve,
)
from driftlock.gateway.kvcache import KvCache

MEMO_LIMIT = 100_000


class TuningWatch:
    def __init__(self, cache: KvCache[DetectionConfig]) -> None:
        self._cache = cache
        self._resolved: dict[tuple[str, str], tuple[DetectionConfig, StreamTuning]] = {}

    @classmethod
    async def start(cls, js: JetStreamContext, prefix: str, *, replicas: int) -> "TuningWatch":
        # The gateway creates the same bucket the same way; whoever comes first creates it.
        bucket = await key_value(js, f"{prefix}_{BUCKET}", replicas=replicas)
        cache = KvCache(bucket, DetectionConfig)
        await cache.start()
        return cls(cache)

    async def restart(self) -> None:
        """Load the bucket again (after a reconnect: the watch may have missed changes)."""
        await self._cache.restart()

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
