"""Open a JetStream KV bucket, creating it (with the given replicas) when it is missing."""

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue


async def key_value(
    js: JetStreamContext, name: str, *, replicas: int, ttl: float | None = None
) -> KeyValue:
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        config = KeyValueConfig(
            bucket=name, history=1, ttl=ttl, storage=StorageType.FILE, replicas=replicas
        )
        try:
            return await js.create_key_value(config)
        except Exception:  # another process created it first
            return await js.key_value(name)
