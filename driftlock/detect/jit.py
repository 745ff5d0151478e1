"""The detectors' compiled loops.

A detector call on a few points used to be hundreds of numpy calls of a microsecond or more
each, whatever the batch size: per-call overhead, not arithmetic, was the cost. The per-point
loops are compiled with numba instead, once per machine, and the machine code is kept on disk
so later processes only load it (~1 s). `nogil` lets the node's heartbeat thread run while a
partition scores a large batch.

numba checks a cached function against its own source file only, not against the compiled
functions it calls: an edit to `rolling.py` would leave `robust.py`'s cached code calling the
old median. The cache directory is therefore named after a hash of every module of this
package, so any edit here starts a fresh cache; the caches of earlier sources go once none
has been written for an hour.
"""

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import numba
import numba.core.config
from numba import types
from numba.extending import intrinsic

F = TypeVar("F", bound=Callable[..., Any])
_PACKAGE = Path(__file__).parent


def _cache_dir() -> Path:
    digest = hashlib.blake2b(digest_size=8)
    for source in sorted(_PACKAGE.glob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return _PACKAGE / "__pycache__" / f"numba-{digest.hexdigest()}"


def drop_stale_caches(current: Path, idle_s: float = 3600.0) -> None:
    """Remove the caches of this package's earlier sources (~12 MB each, one per edit) that
    no process has written to for idle_s: one still starting from old code keeps its own."""
    now = time.time()
    for cache in current.parent.glob("numba-*"):
        with contextlib.suppress(OSError):  # another process may remove it first
            if cache != current and now - cache.stat().st_mtime > idle_s:
                shutil.rmtree(cache)


if "NUMBA_CACHE_DIR" not in os.environ:  # an operator's own choice wins
    _cache = _cache_dir()
    os.environ["NUMBA_CACHE_DIR"] = str(_cache)
    numba.core.config.reload_config()  # type: ignore[no-untyped-call]
    drop_stale_caches(_cache)


def jit(fn: F) -> F:
    """Compile `fn` (numba's nopython mode), keeping its signature for the type checker."""
    return cast(F, numba.njit(cache=True, nogil=True, error_model="numpy")(fn))


def jit_holding_gil(fn: F) -> F:
    """`jit`, but a call from Python keeps the GIL: for a thread that only gives it up to
    wait for it again behind the others (only the outermost compiled call decides)."""
    return cast(F, numba.njit(cache=True, nogil=False, error_model="numpy")(fn))


def _fma(typingctx: object, a: object, b: object, c: object) -> tuple[object, object]:
    def codegen(context: object, builder: Any, signature: object, args: Any) -> Any:
        return builder.fma(*args)

    return types.float64(types.float64, types.float64, types.float64), codegen


fma = cast(Callable[[float, float, float], float], intrinsic(_fma))
"""a × b + c rounded once, as BLAS kernels accumulate a dot product (compiled code only)."""
