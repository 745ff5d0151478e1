"""End to end on one machine: producer → nats-server → one `driftlock node` → LMDB, against
the raw ceiling measured in the same run (JetStream store + DriftLock's pull feed + payload
decode, no DriftLock logic, in as many consumer processes as the node has processes).

    python -m bench.pipeline [--node-processes N] [--rounds N] [--quick]

Reports events/s for single-point messages, 100-point JSON batches and 100-point columnar
msgpack batches (`{"ts": <bin>, "values": <bin>}`), over 1,000 and 100,000 streams: the
producer's own rate, the raw ceiling (its consumer is a separate process, as the node is) and
DriftLock, each the median of several rounds (every round on streams of its own), with the
node's CPU time per event; and the publish → anomaly latency on an idle node and under
load.
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec
import nats
import numpy as np
import uvloop
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench.common import (
    cpu_seconds,
    logged,
    owned_partitions,
    print_table,
    scrape_counter,
    spawn_driftlock,
    stop_process,
    write_results,
)
from driftlock.bus.feed import PartitionFeed
from driftlock.bus.partition import partition_of
from driftlock.bus.server import ManagedNatsServer
from driftlock.bus.streams import StreamLimits, ensure_streams
from driftlock.bus.subjects import Subjects
from driftlock.wire.payload import decode_points

PARTITIONS = 64
FIXED_RATES = (20_000, 50_000, 75_000)
"""Columnar loads whose latency is measured besides 50% and 90% of the maximum: that maximum
is a backlog's, where each stream's queued messages share one detector call; paced, every
message is a call of its own, so latency is also shown at rates a user would configure."""
T0 = 1_732_550_400.0
SPIKES_PER_S = 30
"""Spikes a loaded latency phase times each second: 300 in a 10 s phase, so its p99 is not
just its slowest spike (with 100 it was, and one stall swung it by 100 ms)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    messages: int
    points_per_message: int
    streams: int
    columnar: bool = False

    @property
    def events(self) -> int:
        return self.messages * self.points_per_message


MSGPACK = {"Content-Type": "application/msgpack"}


def payloads(s: Scenario, tenant: str = "bench") -> list[tuple[str, bytes]]:
    rng = random.Random(1)
    out = []
    for i in range(s.messages):
        stream = i % s.streams
        base = T0 + (i // s.streams) * s.points_per_message
        values = [rng.gauss(100, 3) for _ in range(s.points_per_message)]
        if s.columnar:
            ts = np.arange(s.points_per_message, dtype="<f8") + base
            body = msgspec.msgpack.encode(
                {"ts": ts.tobytes(), "values": np.array(values, "<f8").tobytes()}
            )
        elif s.points_per_message == 1:
            body = json.dumps([base, values[0]]).encode()
        else:
            body = json.dumps([[base + j, v] for j, v in enumerate(values)]).encode()
        out.append((f"dl.in.{tenant}{stream % 10}.m{stream}", body))
    return out


async def publish_all(
    nc: Client, messages: list[tuple[str, bytes]], headers: dict[str, str] | None = None
) -> None:
    for i, (subject, body) in enumerate(messages):
        await nc.publish(subject, body, headers=headers)
        if i % 1000 == 999:
            await nc.flush()
    await nc.flush()


async def raw_ceiling(
    url: str, s: Scenario, messages: list[tuple[str, bytes]], processes: int
) -> tuple[float, float]:
    """Store the messages while `processes` other processes (as the node's are) consume the
    partitions with the pull feed, process k those p with p % processes == k, and decode
    each payload. Returns events/s over publish start → last decode, and the producer's own
    rate (publish until the server has stored the last one)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    first_seq = (await js.stream_info("DL_EVENTS")).state.last_seq + 1
    shares = [0] * processes
    for subject, _ in messages:
        _, _, tenant, metric = subject.split(".")
        shares[partition_of(tenant, metric, PARTITIONS) % processes] += s.points_per_message
    consumers = []
    for k, events in enumerate(shares):
        arguments = [url, str(events), str(first_seq), str(k), str(processes)]
        command = [sys.executable, "-m", "bench.pipeline", "--raw-consumer", *arguments]
        consumers.append(
            await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        )
    for consumer in consumers:
        assert consumer.stdout is not None
        await consumer.stdout.readline()  # "ready": its feeds are pulling
    started = time.time()
    await publish_all(nc, messages, MSGPACK if s.columnar else None)
    last = first_seq + len(messages) - 1
    while (await js.stream_info("DL_EVENTS")).state.last_seq < last:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    published = time.time() - started
    done = 0.0
    for consumer in consumers:
        assert consumer.stdout is not None
        done = max(done, float((await consumer.stdout.readline()).decode()))
        await consumer.wait()
    await nc.close()
    return s.events / (done - started), s.events / published


async def consume_raw(url: str, events: int, first_seq: int, index: int, processes: int) -> None:
    """A raw ceiling's consumer of the partitions p with p % processes == index: prints
    "ready", then the wall time of its last decode."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    subjects = Subjects()
    feeds = [
        PartitionFeed(
            nc, js, stream="DL_EVENTS", filter_subject=subjects.partition_filter(p), pull_batch=2000
        )
        for p in range(index, PARTITIONS, processes)
    ]
    for feed in feeds:
        await feed.start(first_seq)
    print("ready", flush=True)
    decoded = 0

    async def drain(feed: PartitionFeed) -> None:
        nonlocal decoded
        while decoded < events:
            for d in await feed.next_batch(100_000, wait_s=0.2):
                content_type = (d.headers or {}).get("Content-Type")
                decoded += len(
                    decode_points(d.data, content_type, now=d.stored_at, max_points=10_000).values
                )

    await asyncio.gather(*(drain(f) for f in feeds))
    print(time.time(), flush=True)
    for feed in feeds:
        await feed.stop()
    await nc.close()


async def end_to_end(
    url: str,
    node: subprocess.Popen[bytes],
    metrics_ports: list[int],
    s: Scenario,
    messages: list[tuple[str, bytes]],
) -> tuple[float, float]:
    """Events/s from the first publish until the node's processes have applied them all,
    and the node's CPU time per event meanwhile (µs): what it costs, whichever process on
    the machine was busy, so it varies much less from run to run than the rate."""

    def applied() -> float:
        # The node is other processes: their applied counts are only visible by scraping.
        return sum(scrape_counter(p, "driftlock_events_applied_total") for p in metrics_ports)

    nc = await nats.connect(url)
    before = applied()
    cpu_before = cpu_seconds(node.pid)
    started = time.perf_counter()
    await publish_all(nc, messages, MSGPACK if s.columnar else None)
    while applied() - before < s.events:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(node.pid) - cpu_before
    await nc.close()
    return s.events / elapsed, 1e6 * cpu / s.events


def for_round(messages: list[tuple[str, bytes]], round_: int) -> list[tuple[str, bytes]]:
    """The messages on streams of their own for a round after the first: a round on the
    streams of the one before would measure streams further into their history, not the
    same thing again."""
    if round_ == 0:
        return messages
    prefix = f"dl.in.r{round_}"
    return [(prefix + subject.removeprefix("dl.in."), body) for subject, body in messages]


def is_spike(msg: Msg) -> bool:
    """The anomaly of a spike point, not one a detector found among the calm points before."""
    return bool(json.loads(msg.data).get("ts") == T0 + 200)


async def warm_up(nc: Client, tenant: str, streams: int, seed: int) -> None:
    """200 calm points for streams s0…, so each is past warm-up when its spike comes."""
    rng = random.Random(seed)
    for i in range(streams):
        warm = [[T0 + j, rng.gauss(10, 1)] for j in range(200)]
        await nc.publish(f"dl.in.{tenant}.s{i}", json.dumps(warm).encode())
    await nc.flush()
    await asyncio.sleep(2.0)


async def idle_latency(url: str, spikes: int) -> list[float]:
    """Warm streams up, then publish one spike at a time and time its anomaly's arrival."""
    nc = await nats.connect(url)
    arrived: dict[str, float] = {}
    signal = asyncio.Event()

    async def on_anomaly(msg: Msg) -> None:
        if is_spike(msg):
            arrived[msg.subject.split(".")[-1]] = time.perf_counter()
            signal.set()

    await nc.subscribe("dl.anomaly.latency.>", cb=on_anomaly)
    await warm_up(nc, "latency", spikes, seed=2)
    latencies = []
    for i in range(spikes):
        signal.clear()
        sent = time.perf_counter()
        await nc.publish(f"dl.in.latency.s{i}", json.dumps([T0 + 200, 60.0]).encode())
        while f"s{i}" not in arrived:
            await signal.wait()
            signal.clear()
        latencies.append(1000 * (arrived[f"s{i}"] - sent))
    await nc.close()
    return latencies


async def loaded_latency(
    url: str, s: Scenario, rate_eps: float, seconds: float, tenant: str
) -> list[float]:
    """Publish→anomaly latency of spikes sent on fresh streams of `tenant` while background
    batches arrive at rate_eps."""
    nc = await nats.connect(url)
    arrived: dict[str, float] = {}

    async def on_anomaly(msg: Msg) -> None:
        if is_spike(msg):
            arrived.setdefault(msg.subject.split(".")[-1], time.perf_counter())

    await nc.subscribe(f"dl.anomaly.{tenant}.>", cb=on_anomaly)
    spikes = max(int(seconds * SPIKES_PER_S), 5)
    await warm_up(nc, tenant, spikes, seed=3)
    messages = int(rate_eps * seconds / s.points_per_message) + 1
    # Streams of their own: another phase's would go back in time to T0.
    load = payloads(replace(s, messages=messages), tenant=f"{tenant}load")
    headers = MSGPACK if s.columnar else None
    sent: dict[str, float] = {}
    started = time.perf_counter()
    per_tick = rate_eps * 0.01 / s.points_per_message
    budget, spike = 0.0, 0
    for subject, body in load:
        budget -= 1
        while budget < 0:  # pace: at most per_tick messages each 10 ms
            await asyncio.sleep(0.01)
            budget += per_tick
            elapsed = time.perf_counter() - started
            if spike < spikes and elapsed >= spike * seconds / spikes:
                sent[f"s{spike}"] = time.perf_counter()
                await nc.publish(f"dl.in.{tenant}.s{spike}", json.dumps([T0 + 200, 60.0]).encode())
                spike += 1
        await nc.publish(subject, body, headers=headers)
    deadline = time.perf_counter() + 30
    while len(arrived) < len(sent) and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await nc.close()
    return [1000 * (arrived[k] - t) for k, t in sent.items() if k in arrived]


async def purge_events(url: str) -> None:
    """Empty DL_EVENTS: a fresh node applies the stream from its start, so it would also work
    through the raw ceiling's copy and every earlier scenario while being measured."""
    nc = await nats.connect(url)
    await nc.jetstream().purge_stream("DL_EVENTS")
    await nc.close()


def start_node(
    url: str, data_dir: Path, processes: int = 1
) -> tuple[subprocess.Popen[bytes], list[int]]:
    """A `driftlock node` of `processes` processes; it and their metrics ports."""
    args = ["node", "--nats-url", url, "--data-dir", str(data_dir), "--metrics-port", "0",
            "--partitions", str(PARTITIONS), "--processes", str(processes)]  # fmt: skip
    process, _ = spawn_driftlock(args, data_dir, "node started", count=processes)
    ports = [int(r["metrics_port"]) for r in logged(data_dir, "node started")]
    _wait_for_partitions(ports)
    return process, ports


def _wait_for_partitions(ports: list[int], timeout: float = 60) -> None:
    """Until the processes run all partitions between them, each its share: the first to
    start takes them all and hands some off as the others join, which a measurement must
    not include."""
    deadline = time.monotonic() + timeout
    owned: list[int] = []
    since = time.monotonic()
    while time.monotonic() < deadline:
        now = [owned_partitions(p) for p in ports]
        if now != owned:
            owned, since = now, time.monotonic()
        # Moves go a few partitions at a time: the shares must also have stood still.
        if sum(owned) == PARTITIONS and all(owned) and time.monotonic() - since >= 2.0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the node's processes own {owned} of {PARTITIONS} partitions")


async def main(quick: bool, streams: set[int], processes: int, rounds: int) -> dict[str, Any]:
    scale = 0.02 if quick else 1.0
    scenarios = [
        Scenario("1-point messages", int(100_000 * scale), 1, 1000),
        Scenario("100-point batches", int(20_000 * scale), 100, 1000),
        Scenario("100-point columnar", int(20_000 * scale), 100, 1000, columnar=True),
        Scenario("1-point messages", int(100_000 * scale), 1, 100_000),
        Scenario("100-point columnar", int(100_000 * scale), 100, 100_000, columnar=True),
    ]
    scenarios = [s for s in scenarios if s.streams in streams]
    results: dict[str, Any] = {
        "quick": quick,
        "node_processes": processes,
        "rounds": rounds,
        "scenarios": [],
    }
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = ManagedNatsServer(
            base_dir=Path(tmp) / "nats", subjects=Subjects(), partitions=PARTITIONS
        )
        await server.start()
        try:
            nc = await nats.connect(server.url)
            await ensure_streams(
                nc.jetstream(), Subjects(), PARTITIONS, StreamLimits(3600, 3600, 600)
            )
            await nc.close()
            for s in scenarios:
                messages = payloads(s)
                ceilings = []
                for _ in range(rounds):
                    ceilings.append(await raw_ceiling(server.url, s, messages, processes))
                ceiling, publish_rate = (statistics.median(c) for c in zip(*ceilings, strict=True))
                await purge_events(server.url)
                node_dir = Path(tmp) / f"node-{len(rows)}"
                node, ports = start_node(server.url, node_dir, processes)
                try:
                    runs = [
                        await end_to_end(server.url, node, ports, s, for_round(messages, r))
                        for r in range(rounds)
                    ]
                    e2e, cpu_us = (statistics.median(r) for r in zip(*runs, strict=True))
                    latencies = (
                        await idle_latency(server.url, 20 if quick else 200)
                        if s.points_per_message == 1 and s.streams == 1000
                        else []
                    )
                    if s.columnar and s.streams == 1000:
                        loads = [(f"{int(share * 100)}pct", share * e2e) for share in (0.5, 0.9)]
                        loads += [(f"{rate}eps", float(rate)) for rate in FIXED_RATES]
                        for name, rate in loads:
                            found = await loaded_latency(
                                server.url, s, rate, 2 if quick else 10, tenant=f"loaded{name}"
                            )
                            phase = {**_quantiles(found), "rate_eps": rate}
                            results[f"latency_ms_at_{name}"] = phase
                finally:
                    stop_process(node)
                spread = [r[0] for r in runs]
                rows.append(
                    [
                        s.name,
                        s.streams,
                        s.events,
                        publish_rate,
                        ceiling,
                        e2e,
                        f"{min(spread):,.0f}–{max(spread):,.0f}",
                        f"{e2e / ceiling:.2f}",
                        cpu_us,
                    ]
                )
                results["scenarios"].append(
                    {"name": s.name, "events": s.events, "streams": s.streams,
                     "publish_eps": publish_rate, "raw_ceiling_eps": ceiling,
                     "end_to_end_eps": e2e, "node_cpu_us_per_event": cpu_us,
                     "rounds": {"raw_ceiling_eps": [c[0] for c in ceilings],
                                "end_to_end_eps": spread,
                                "node_cpu_us_per_event": [r[1] for r in runs]}}
                )  # fmt: skip
                if latencies:
                    results["idle_latency_ms"] = _quantiles(latencies)
        finally:
            server.stop()
    print_table(
        f"End to end, one node of {processes} process(es), 64 partitions (events/s; median of "
        f"{rounds} round(s), each on streams of its own)",
        [
            "scenario",
            "streams",
            "events",
            "publish only",
            "raw ceiling",
            "DriftLock",
            "DriftLock's range",
            "ratio",
            "node CPU µs/event",
        ],
        rows,
    )

    def at_share(share: int) -> str:
        """The phase's rate too: it moves with each run's maximum."""
        rate = results.get(f"latency_ms_at_{share}pct", {}).get("rate_eps", 0.0)
        return f"{share}% of max throughput (columnar, {rate:,.0f} events/s)"

    for key, label in [
        ("idle_latency_ms", "an idle node"),
        ("latency_ms_at_50pct", at_share(50)),
        ("latency_ms_at_90pct", at_share(90)),
        *((f"latency_ms_at_{rate}eps", f"{rate:,} events/s (columnar)") for rate in FIXED_RATES),
    ]:
        if key in results:
            lat = results[key]
            print(
                f"\npublish → anomaly at {label}: p50 {lat['p50']:.1f} ms, "
                f"p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms ({lat['n']} spikes)"
            )
    return results


def _quantiles(latencies: list[float]) -> dict[str, float]:
    if len(latencies) < 2:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "n": 0}
    q = statistics.quantiles(latencies, n=100)
    return {"p50": q[49], "p95": q[94], "p99": q[98], "n": len(latencies)}


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the bench runs")
    parser.add_argument(
        "--streams",
        type=int,
        nargs="+",
        choices=(1000, 100_000),
        default=[1000, 100_000],
        help="run only the scenarios over these numbers of streams (default: both)",
    )
    parser.add_argument(
        "--node-processes",
        type=int,
        default=0,
        help="the node's --processes, and the raw ceiling's consumer processes "
        "(default 0: one per core)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="measure each scenario's raw ceiling and end to end this many times and report "
        "the medians (default 3; 1 with --quick): one run swings by ±30%% on a shared machine",
    )
    parser.add_argument(
        "--raw-consumer",
        nargs=5,
        metavar=("URL", "EVENTS", "FIRST_SEQ", "INDEX", "PROCESSES"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    if args.raw_consumer:
        url, *numbers = args.raw_consumer
        uvloop.run(consume_raw(url, *map(int, numbers)))
        return
    if args.node_processes < 0:
        parser.error(f"--node-processes {args.node_processes}: must be 0 or more")
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: must be 1 or more")
    rounds = args.rounds or (1 if args.quick else 3)
    processes = args.node_processes or os.cpu_count() or 1
    results = uvloop.run(main(args.quick, set(args.streams), processes, rounds))
    print("wrote", write_results("pipeline-quick" if args.quick else "pipeline", results))


if __name__ == "__main__":
    cli()
