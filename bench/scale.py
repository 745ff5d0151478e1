"""How many streams fit on one node: resident memory and LMDB size per stream with every
stream active, then after passivation, and the cost of bringing a passivated actor back.

    python -m bench.scale --streams 1000000
    python -m bench.scale --quick            # 5,000 streams (the test suite runs it)
"""

import argparse
import asyncio
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

PARTITIONS = 64
T0 = 1_732_550_400.0
HEADERS = {"Content-Type": "application/msgpack"}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def message(points: int, start: float, rng: np.random.Generator) -> bytes:
    ts = (np.arange(points, dtype="<f8") + start).tobytes()
    return msgspec.msgpack.encode({"ts": ts, "values": rng.normal(100, 3, points).tobytes()})


async def publish_round(nc: Client, streams: int, points: int, start: float) -> None:
    rng = np.random.default_rng(int(start))
    for s in range(streams):
        await nc.publish(f"dl.in.scale{s % 100}.m{s}", message(points, start, rng), headers=HEADERS)
        if s % 2000 == 1999:
            await nc.flush()
    await nc.flush()


async def wait_applied(port: int, target: float, timeout: float) -> float:
    started = time.monotonic()
    while scrape_counter(port, "driftlock_events_applied_total") < target:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{target:.0f} events not applied in {timeout}s")
        await asyncio.sleep(0.5)
    return time.monotonic() - started


def gauge(port: int, name: str) -> float:
    return scrape_counter(port, name)


async def run(streams: int, points: int, passivate_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        server = ManagedNatsServer(
            base_dir=base / "nats", subjects=Subjects(), partitions=PARTITIONS
        )
        url = await server.start()
        node, record = spawn_driftlock(
            ["node", "--nats-url", url, "--data-dir", str(base / "node"),
             "--metrics-port", "0", "--partitions", str(PARTITIONS),
             "--passivate-after-s", str(passivate_s), "--no-lmdb-sync"],
            base / "node", "node started",
        )  # fmt: skip
        port = int(record["metrics_port"])
        nc = await nats.connect(url)
        try:
            baseline = rss_bytes(node.pid)
            started = time.monotonic()
            await publish_round(nc, streams, points, T0)
            await wait_applied(port, streams * points, 3600)
            first_round_s = time.monotonic() - started
            active_rss = rss_bytes(node.pid)
            lmdb = gauge(port, "driftlock_lmdb_size_bytes")
            await asyncio.sleep(passivate_s + 3)  # every actor idle: passivated
            passive_rss = rss_bytes(node.pid)
            active_after = gauge(port, 'driftlock_actors{state="active"}')
            # Second round: every actor comes back from LMDB; third: all warm in memory.
            started = time.monotonic()
            await publish_round(nc, streams, points, T0 + points)
            await wait_applied(port, 2 * streams * points, 3600)
            reactivate_s = time.monotonic() - started
            started = time.monotonic()
            await publish_round(nc, streams, points, T0 + 2 * points)
            await wait_applied(port, 3 * streams * points, 3600)
            warm_s = time.monotonic() - started
        finally:
            await nc.close()
            node.terminate()
            node.wait(60)
            server.stop()
    return {
        "streams": streams,
        "points_per_stream_round": points,
        "baseline_rss_bytes": baseline,
        "rss_bytes_all_active": active_rss,
        "rss_bytes_passivated": passive_rss,
        "active_actors_after_passivation": active_after,
        "rss_per_active_stream_bytes": (active_rss - baseline) / streams,
        "lmdb_bytes": lmdb,
        "lmdb_per_stream_bytes": lmdb / streams,
        "first_round_s": first_round_s,
        "reactivation_round_s": reactivate_s,
        "warm_round_s": warm_s,
        "activation_cost_us": 1e6 * max(reactivate_s - warm_s, 0.0) / streams,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1_000_000)
    parser.add_argument("--points", type=int, default=10, help="points per stream and round")
    parser.add_argument("--quick", action="store_true", help="5,000 streams")
    args = parser.parse_args()
    streams = 5000 if args.quick else args.streams
    results = asyncio.run(run(streams, args.points, passivate_s=5.0))
    mib = 1 << 20
    print_table(
        f"Scale: {streams:,} streams on one node",
        ["measure", "value"],
        [
            ["RSS, every stream active (MiB)", results["rss_bytes_all_active"] / mib],
            ["RSS after passivation (MiB)", results["rss_bytes_passivated"] / mib],
            ["active actors after passivation", results["active_actors_after_passivation"]],
            ["RSS per active stream (bytes)", results["rss_per_active_stream_bytes"]],
            ["LMDB (MiB)", results["lmdb_bytes"] / mib],
            ["LMDB per stream (bytes)", results["lmdb_per_stream_bytes"]],
            ["round 1, new actors (s)", results["first_round_s"]],
            ["round 2, reactivated from LMDB (s)", results["reactivation_round_s"]],
            ["round 3, warm (s)", results["warm_round_s"]],
            ["activation cost per actor (µs)", results["activation_cost_us"]],
        ],
    )
    print("results:", write_results("scale-quick" if args.quick else "scale", results))


if __name__ == "__main__":
    main()
