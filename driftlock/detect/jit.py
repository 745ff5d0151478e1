"""The detectors' compiled loops.

A detector call on a few points used to be hundreds of numpy calls of a microsecond or more
each, whatever the batch size: per-call overhead, not arithmetic, was the cost. The per-point
loops are compiled with numba instead, once per machine (`cache=True` keeps the machine code
in `__pycache__`, so later processes load it). `nogil` lets the node's heartbeat thread run
while a partition scores a large batch.
"""

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

F = TypeVar("F", bound=Callable[..., Any])


def jit(fn: F) -> F:
    """Compile `fn` (numba's nopython mode), keeping its signature for the type checker."""
    return cast(F, numba.njit(cache=True, nogil=True, error_model="numpy")(fn))
