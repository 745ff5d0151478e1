"""Reading an Object Store object chunk by chunk with direct gets, without a consumer.

nats-py's `ObjectStore.get` reads through an ordered push consumer and waits for its
chunks with no deadline. On a cluster that lost a server, nats-server places some new
consumers on the dead peer: the creation is never answered, or the chunks never come, and
a snapshot restore waited forever while its node held the partition's lease. A direct get
is one request per chunk, answered by any live replica (object streams allow direct
gets), each with the JetStream context's timeout, so a read either finishes or fails.
"""

import base64
import hashlib

from nats.js import JetStreamContext
from nats.js.api import ObjectInfo

DIGEST_PREFIX = "SHA-256="


class ObjectReadError(Exception):
    """The chunks read do not make up the object its info describes."""


async def read_object(js: JetStreamContext, bucket: str, info: ObjectInfo) -> bytes:
    """The object's bytes, checked against the size and digest in its info."""
    size = info.size or 0
    subject = f"$O.{bucket}.C.{info.nuid}"
    chunks: list[bytes] = []
    received, seq = 0, 1
    while received < size:
        msg = await js.get_msg(f"OBJ_{bucket}", seq=seq, subject=subject, direct=True, next=True)
        if msg.seq is None:
            raise ObjectReadError(f"object {info.name}: a chunk came without its sequence")
        chunks.append(msg.data or b"")
        received += len(chunks[-1])
        seq = msg.seq + 1
    data = b"".join(chunks)
    if len(data) != size:
        raise ObjectReadError(f"object {info.name}: read {len(data)} bytes, expected {size}")
    _check_digest(info, data)
    return data


def _check_digest(info: ObjectInfo, data: bytes) -> None:
    digest = info.digest or ""
    if not digest.upper().startswith(DIGEST_PREFIX):
        return  # an object without a digest (nats-py writes one; others may not)
    expected = base64.urlsafe_b64decode(digest[len(DIGEST_PREFIX) :])
    if hashlib.sha256(data).digest() != expected:
        raise ObjectReadError(f"object {info.name}: digest mismatch")
