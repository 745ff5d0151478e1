import os
import time
from pathlib import Path

from driftlock.detect.jit import drop_stale_caches


def _cache(root: Path, name: str, age_s: float) -> Path:
    cache = root / name
    (cache / "index").mkdir(parents=True)
    (cache / "index" / "f.nbi").write_bytes(b"x")
    then = time.time() - age_s
    os.utime(cache, (then, then))
    return cache


def test_only_idle_caches_of_other_sources_are_removed(tmp_path: Path) -> None:
    current = _cache(tmp_path, "numba-current", age_s=86_400)
    stale = _cache(tmp_path, "numba-old", age_s=7_200)
    busy = _cache(tmp_path, "numba-recent", age_s=60)
    other = _cache(tmp_path, "not-numba", age_s=86_400)

    drop_stale_caches(current, idle_s=3_600)

    assert not stale.exists()
    assert current.exists() and busy.exists() and other.exists()
