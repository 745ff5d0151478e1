"""How many streams fit on one node: resident memory with the node's limit of actors in memory
(`--max-active-actors`) and after passivation, bytes per stream in memory and in LMDB, and the
cost of bringing a passivated actor back.

    python -m bench.scale --streams 1000000
    python -m bench.scale --streams 200000 --max-active 50000
    python -m bench.scale --quick            # 5,000 streams, all in memory (the test suite)

Round 1 sends every stream one message (`--points` points): each stream gets an actor, at
most `--max-active` stay in memory. Then the node is left idle until every actor has
passivated. Round 2 sends a sample of the streams one more message: each actor comes back
from LMDB (the node times the reads: `driftlock_actor_restore_seconds_total`); round 3 sends
the same sample again, now warm in memory, for the end-to-end difference.
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

from bench.common import (
    print_table,
    scrape_counter,
    spawn_driftlock,
    stop_process,
    write_results,
)
from driftlock.bus.server import ManagedNatsServer
from driftlock.bus.subjects import Subjects

PARTITIONS = 64
AHEAD = 50_000
T0 = 1_732_550_400.0
HEADERS = {"Content-Type": "application/msgpack"}
MIB = 1 << 20


def memory(pid: int) -> dict[str, int]:
    """Resident memory in bytes: all of it, anonymous (the heap), file-backed (mostly LMDB
    pages read through its memory map, by reactivations and partition snapshots: page cache
    the kernel can take back), and the peak so far."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            found[fields[key]] = int(value.split()[0]) * 1024
    return found


def message(points: int, start: float, rng: np.random.Generator) -> bytes:
    ts = (np.arange(points, dtype="<f8") + start).tobytes()
    return msgspec.msgpack.encode({"ts": ts, "values": rng.normal(100, 3, points).tobytes()})


async def publish_round(
    nc: Client, streams: int, points: int, start: float, port: int, applied: float
) -> None:
    """One message per stream (a message is one stream's points); publishes are pipelined,
    flushed every 2,000, and stay at most AHEAD streams ahead of the node (a flood of a
    million stored messages starved nats-server's JetStream API: consumer requests timed out
    and the node let its partitions go). `applied`: events the node had applied before."""
    rng = np.random.default_rng(int(start))
    for s in range(streams):
        await nc.publish(f"dl.in.scale{s % 100}.m{s}", message(points, start, rng), headers=HEADERS)
        if s % 2000 == 1999:
            await nc.flush()
            if s + 1 > AHEAD:
                await wait_applied(port, applied + (s + 1 - AHEAD) * points, 3600)
    await nc.flush()


async def wait_applied(port: int, target: float, timeout: float) -> float:
    started = time.monotonic()
    while scrape_counter(port, "driftlock_events_applied_total") < target:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{target:.0f} events not applied in {timeout}s")
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def wait_passivated(port: int, timeout: float) -> None:
    started = time.monotonic()
    while scrape_counter(port, 'driftlock_actors{state="active"}') > 0:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"actors still active after {timeout}s")
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.5)  # the sweep that emptied it trims the heap right after


async def run(
    streams: int, points: int, max_active: int | None, sample: int, passivate_s: float
) -> dict[str, Any]:
    limit = ["--max-active-actors", str(max_active)] if max_active else []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        server = ManagedNatsServer(
            base_dir=base / "nats", subjects=Subjects(), partitions=PARTITIONS
        )
        url = await server.start()
        node, record = spawn_driftlock(
            ["node", "--nats-url", url, "--data-dir", str(base / "node"),
             "--metrics-port", "0", "--partitions", str(PARTITIONS),
             "--passivate-after-s", str(passivate_s), "--no-lmdb-sync", *limit],
            base / "node", "node started",
        )  # fmt: skip
        port = int(record["metrics_port"])
        nc = await nats.connect(url)
        try:
            baseline = memory(node.pid)
            started = time.monotonic()
            await publish_round(nc, streams, points, T0, port, 0)
            publish_s = time.monotonic() - started
            await wait_applied(port, streams * points, 4 * 3600)
            first_round_s = time.monotonic() - started
            loaded = memory(node.pid)
            active = scrape_counter(port, 'driftlock_actors{state="active"}')
            limit_evictions = scrape_counter(port, 'driftlock_actor_evictions_total{cause="limit"}')
            lmdb = scrape_counter(port, "driftlock_lmdb_size_bytes")
            snapshots = scrape_counter(port, "driftlock_snapshot_bytes_total")
            await wait_passivated(port, passivate_s + 120)
            passive = memory(node.pid)
            active_after = scrape_counter(port, 'driftlock_actors{state="active"}')
            # Round 2: the sample comes back from LMDB; round 3: the same sample, warm.
            done = streams * points
            started = time.monotonic()
            await publish_round(nc, sample, points, T0 + points, port, done)
            await wait_applied(port, done + sample * points, 3600)
            reactivate_s = time.monotonic() - started
            restored = scrape_counter(port, 'driftlock_actor_activations_total{source="lmdb"}')
            restore_s = scrape_counter(port, "driftlock_actor_restore_seconds_total")
            started = time.monotonic()
            await publish_round(nc, sample, points, T0 + 2 * points, port, done + sample * points)
            await wait_applied(port, done + 2 * sample * points, 3600)
            warm_s = time.monotonic() - started
        finally:
            await nc.close()
            stop_process(node)
            server.stop()
    return {
        "streams": streams,
        "points_per_stream_round": points,
        "max_active_actors": max_active or "node default",
        "baseline_rss_bytes": baseline["rss"],
        "baseline_anon_bytes": baseline["anon"],
        "active_actors_after_round_1": active,
        "limit_evictions_round_1": limit_evictions,
        "rss_bytes_all_active": loaded["rss"],
        "anon_bytes_all_active": loaded["anon"],
        "file_bytes_all_active": loaded["file"],
        "peak_rss_bytes_round_1": loaded["peak"],
        "snapshot_bytes_round_1": snapshots,
        "rss_bytes_passivated": passive["rss"],
        "anon_bytes_passivated": passive["anon"],
        "file_bytes_passivated": passive["file"],
        "active_actors_after_passivation": active_after,
        "rss_per_active_stream_bytes": (loaded["anon"] - baseline["anon"]) / max(active, 1),
        "rss_per_stream_passivated_bytes": (passive["anon"] - baseline["anon"]) / streams,
        "lmdb_bytes": lmdb,
        "lmdb_per_stream_bytes": lmdb / streams,
        "publish_s": publish_s,
        "first_round_s": first_round_s,
        "sample_streams": sample,
        "reactivation_round_s": reactivate_s,
        "warm_round_s": warm_s,
        "restored_from_lmdb": restored,
        "activation_cost_us": 1e6 * restore_s / max(restored, 1),
        "activation_cost_end_to_end_us": 1e6 * max(reactivate_s - warm_s, 0.0) / sample,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1_000_000)
    parser.add_argument("--points", type=int, default=10, help="points per stream and round")
    parser.add_argument(
        "--max-active", type=int, default=None, help="the node's --max-active-actors"
    )
    parser.add_argument(
        "--sample", type=int, default=10_000, help="streams reactivated in rounds 2 and 3"
    )
    parser.add_argument(
        "--passivate-s",
        type=float,
        default=None,
        help="the node's --passivate-after-s: longer than round 1 takes (default 20, or 120 "
        "above 5,000 streams), so the limit, not idleness, bounds memory in round 1",
    )
    parser.add_argument("--quick", action="store_true", help="5,000 streams")
    args = parser.parse_args()
    streams = 5000 if args.quick else args.streams
    sample = min(streams, 2000 if args.quick else args.sample)
    passivate_s = args.passivate_s or (20.0 if streams <= 5000 else 120.0)
    results = asyncio.run(run(streams, args.points, args.max_active, sample, passivate_s))
    r = results
    print_table(
        f"Scale: {streams:,} streams on one node (max active actors: {r['max_active_actors']})",
        ["measure", "value"],
        [
            ["RSS at start (MiB)", r["baseline_rss_bytes"] / MIB],
            ["  of it heap (MiB)", r["baseline_anon_bytes"] / MIB],
            ["active actors after round 1", r["active_actors_after_round_1"]],
            ["evicted beyond the limit in round 1", r["limit_evictions_round_1"]],
            ["RSS after round 1 (MiB)", r["rss_bytes_all_active"] / MIB],
            ["  of it heap / file-backed (MiB)", _pair(r, "all_active")],
            ["peak RSS in round 1 (MiB)", r["peak_rss_bytes_round_1"] / MIB],
            ["snapshots uploaded in round 1 (MiB)", r["snapshot_bytes_round_1"] / MIB],
            ["RSS after passivation (MiB)", r["rss_bytes_passivated"] / MIB],
            ["  of it heap / file-backed (MiB)", _pair(r, "passivated")],
            ["active actors after passivation", r["active_actors_after_passivation"]],
            ["heap per active stream (bytes)", r["rss_per_active_stream_bytes"]],
            ["heap per passivated stream (bytes)", r["rss_per_stream_passivated_bytes"]],
            ["LMDB (MiB)", r["lmdb_bytes"] / MIB],
            ["LMDB per stream (bytes)", r["lmdb_per_stream_bytes"]],
            ["round 1: publish, paced (s)", r["publish_s"]],
            ["round 1: all applied (s)", r["first_round_s"]],
            [f"round 2: {sample:,} reactivated from LMDB (s)", r["reactivation_round_s"]],
            [f"round 3: {sample:,} warm (s)", r["warm_round_s"]],
            ["activation cost per actor, LMDB read (µs)", r["activation_cost_us"]],
            ["activation cost per actor, end to end (µs)", r["activation_cost_end_to_end_us"]],
        ],
    )
    name = "scale-quick" if args.quick else f"scale-{streams}"
    print("results:", write_results(name, results))


def _pair(r: dict[str, Any], which: str) -> str:
    return f"{r[f'anon_bytes_{which}'] / MIB:,.0f} / {r[f'file_bytes_{which}'] / MIB:,.0f}"


if __name__ == "__main__":
    main()
