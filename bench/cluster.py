"""Cluster rebalancing: how long a joining node takes to own its share of the partitions,
the handoff pause per partition (old owner's stop request → new owner running), and the
failover time after `kill -9` (until every partition of the dead node runs elsewhere).

    python -m bench.cluster            # 64 partitions, 10,000 streams of state
    python -m bench.cluster --quick    # 16 partitions, 200 streams (the test suite runs it)
"""

import argparse
import asyncio
import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import numpy as np
from nats.aio.client import Client

from bench.common import print_table, scrape_counter, spawn_driftlock, write_results
from driftlock.bus.server import ManagedNatsServer
from driftlock.bus.subjects import Subjects
from driftlock.cluster.rendezvous import assignment


async def owners(nc: Client, partitions: int) -> dict[int, str]:
    kv = await nc.jetstream().key_value("dl_leases")
    found = {}
    for p in range(partitions):
        try:
            entry = await kv.get(f"p.{p}")
        except Exception:
            continue
        node = json.loads(entry.value or b"{}").get("node")
        if node:
            found[p] = node
    return found


async def wait_for(nc: Client, partitions: int, want: dict[str, int], timeout: float) -> float:
    """Seconds until the lease table shows exactly `want` partitions per node."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        found = await owners(nc, partitions)
        counts = {n: list(found.values()).count(n) for n in want}
        if len(found) == partitions and counts == want:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise RuntimeError(f"partitions did not settle to {want} within {timeout}s")


async def load_state(nc: Client, streams: int, points: int) -> int:
    """Give every stream `points` points (100 per message), acked by JetStream."""
    js = nc.jetstream()
    encoder = msgspec.json.Encoder()
    rng = np.random.default_rng(1)
    t0 = 1_732_550_400.0
    futures = []
    for s in range(streams):
        values = rng.normal(100, 5, points)
        for lo in range(0, points, 100):
            chunk = [[t0 + i, float(v)] for i, v in enumerate(values[lo : lo + 100], lo)]
            futures.append(await js.publish_async(f"dl.in.bench.s{s}", encoder.encode(chunk)))
        if len(futures) > 2000:
            await asyncio.gather(*futures)
            futures = []
    await asyncio.gather(*futures)
    return streams * points


async def wait_applied(ports: list[int], points: int, timeout: float) -> None:
    """Until the nodes' applied-events counters add up to `points`."""
    deadline = time.monotonic() + timeout
    while sum(scrape_counter(p, "driftlock_events_applied_total") for p in ports) < points:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{points} points not applied within {timeout}s")
        await asyncio.sleep(0.5)


def node_args(url: str, base: Path, name: str, partitions: int, lease_s: float) -> list[str]:
    return [
        "node",
        *("--nats-url", url, "--data-dir", str(base / name), "--node-id", name),
        *("--partitions", str(partitions), "--metrics-port", "0"),
        *("--lease-ttl-s", str(lease_s), "--member-ttl-s", str(lease_s)),
    ]


def pauses(logs: list[Path]) -> list[float]:
    found = []
    for log in logs:
        for line in log.read_text().splitlines():
            if '"partition acquired"' in line:
                pause = json.loads(line).get("handoff_pause_s")
                if pause is not None:
                    found.append(float(pause))
    return found


async def run(partitions: int, streams: int, points: int, lease_s: float) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    server = ManagedNatsServer(base_dir=base / "nats", subjects=Subjects(), partitions=partitions)
    url = await server.start()
    nc = await nats.connect(url)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        ports = []
        for name in ("n1", "n2"):
            processes[name], record = spawn_driftlock(
                node_args(url, base, name, partitions, lease_s), base / name, "node started"
            )
            ports.append(int(record["metrics_port"]))
        await wait_for(nc, partitions, _share({"n1": 1, "n2": 1}, partitions), 60)
        loaded = await load_state(nc, streams, points)
        await wait_applied(ports, loaded, 900)  # rebalance a settled cluster

        started = time.monotonic()
        processes["n3"], _ = spawn_driftlock(
            node_args(url, base, "n3", partitions, lease_s), base / "n3", "node started"
        )
        process_start = time.monotonic() - started
        want = _share({"n1": 1, "n2": 1, "n3": 1}, partitions)
        join_s = process_start + await wait_for(nc, partitions, want, 120)

        processes["n1"].send_signal(signal.SIGTERM)
        drain_s = await wait_for(
            nc, partitions, {"n1": 0, **_share({"n2": 1, "n3": 1}, partitions)}, 120
        )
        processes["n1"].wait(30)

        processes["n2"].kill()
        failover_s = await wait_for(nc, partitions, {"n2": 0, "n3": partitions}, 120)
        handoffs = pauses([base / n / "driftlock.log" for n in ("n1", "n2", "n3")])
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        await nc.close()
        server.stop()
    return {
        "partitions": partitions,
        "streams": streams,
        "points_loaded": loaded,
        "lease_ttl_s": lease_s,
        "join_s": join_s,
        "join_process_start_s": process_start,
        "sigterm_handoff_s": drain_s,
        "failover_s": failover_s,
        "handoffs": len(handoffs),
        "handoff_pause_p50_s": float(np.percentile(handoffs, 50)) if handoffs else None,
        "handoff_pause_p99_s": float(np.percentile(handoffs, 99)) if handoffs else None,
    }


def _share(members: dict[str, float], partitions: int) -> dict[str, int]:
    owners = assignment(members, partitions)
    return {m: owners.count(m) for m in members}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 partitions, 200 streams")
    parser.add_argument("--lease-ttl-s", type=float, default=5.0, help="lease and member TTL")
    args = parser.parse_args()
    partitions, streams, points = (16, 200, 100) if args.quick else (64, 10_000, 100)
    lease = 2.0 if args.quick else args.lease_ttl_s
    results = asyncio.run(run(partitions, streams, points, lease))
    print_table(
        f"Cluster rebalancing: {partitions} partitions, {streams:,} streams of state",
        ["measure", "value"],
        [
            ["join: 3rd node owns its share (s)", results["join_s"]],
            ["  of which process start (s)", results["join_process_start_s"]],
            ["SIGTERM: node's partitions moved (s)", results["sigterm_handoff_s"]],
            [f"kill -9: failover, lease {lease:g}s (s)", results["failover_s"]],
            ["handoffs measured", results["handoffs"]],
            ["handoff pause p50 (s)", results["handoff_pause_p50_s"]],
            ["handoff pause p99 (s)", results["handoff_pause_p99_s"]],
        ],
    )
    path = write_results("cluster-quick" if args.quick else "cluster", results)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
