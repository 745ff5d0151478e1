"""What the benchmarks share: a managed nats-server, a node process, result tables."""

import functools
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [list(map(str, header))] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_results(name: str, results: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    results = {"python": sys.version.split()[0], "at": time.time(), **results}
    path.write_text(json.dumps(results, indent=2))
    return path


def spawn_driftlock(
    args: list[str], data_dir: Path, started: str, timeout: float = 60, count: int = 1
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """`driftlock <args>` with its log in data_dir; returns once it logs the `started`
    message `count` times (a node of several processes logs it once each), with the first
    of those log records (all of them: `logged`)."""
    if args[0] == "node":  # the only process that builds detectors
        _detectors_compiled()
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "driftlock.cli", *args],
        stdout=(data_dir / "driftlock.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = logged(data_dir, started)
        if len(records) >= count:
            return process, records[0]
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(
        f"driftlock {args[0]} did not start: {(data_dir / 'driftlock.log').read_text()}"
    )


@functools.cache
def _detectors_compiled() -> None:
    """Compile the detectors' loops here first (numba keeps them on disk): a process started
    right after a change to `driftlock/detect/` would compile them itself, ~2 minutes on
    the reference VM, and miss its start timeout. (Imported here: the other benches need
    neither numba nor the detectors.)"""
    from driftlock.detect import Detector

    Detector()


def logged(data_dir: Path, message: str) -> list[dict[str, Any]]:
    """The records of `message` in the log of a process `spawn_driftlock` started."""
    lines = (data_dir / "driftlock.log").read_text().splitlines()
    return [json.loads(line) for line in lines if f'"{message}"' in line]


def scrape_counter(port: int, name: str) -> float:
    # A node busy with 100,000 streams answers slowly, not wrongly: wait for it.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        text: str = response.read().decode()
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def owned_partitions(port: int) -> int:
    """How many partitions the node process serving metrics on `port` runs now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        text: str = response.read().decode()
    return len(re.findall(r"^driftlock_partition_lag\{", text, re.M))


def stop_process(process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """SIGTERM, then SIGKILL after `timeout`: a node with 100,000 streams hands every
    partition off with a fresh snapshot (gigabytes), and a bench has no next owner."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process and its live child processes have used, from
    /proc (Linux; elsewhere NaN): a node's own cost, whatever else ran on the machine."""
    proc = Path("/proc")
    if not (proc / str(pid) / "stat").exists():
        return float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # The command name (2nd field) may hold spaces: count fields after its ')'.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # it exited meanwhile
            continue
        process, parent = int(stat.parent.name), int(fields[1])
        if pid in (process, parent):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total
