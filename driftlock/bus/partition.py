"""The partition of a stream, computed exactly as nats-server's `partition()` mapping does.

nats-server hashes the concatenation of the selected tokens (no separator) with 32-bit
FNV-1a and takes it modulo the partition count; tests check this against a real server.
"""

from functools import lru_cache

from driftlock.detect.jit import jit_holding_gil

_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193


@jit_holding_gil
def fnv1a_32(data: bytes) -> int:
    """Compiled: a worker checks the partition of every new subject it sees, and in Python
    the byte loop cost ~2.5 µs a subject (0.4 compiled), 5% of a node's event loop while
    100,000 new streams arrived. It keeps the GIL: the event loop calls it, and a call that
    let the GIL go could wait behind another thread to get it back (`wire.payload._all_good`)."""
    h = _FNV32_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV32_PRIME) & 0xFFFFFFFF
    return h


@lru_cache(maxsize=65536)
def partition_of(tenant: str, metric: str, partitions: int) -> int:
    return fnv1a_32((tenant + metric).encode()) % partitions
