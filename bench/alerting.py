"""Alerting throughput and latency: anomalies put on DL_ANOMALIES as a node publishes them,
a `driftlock alerter` process, and a local HTTP server receiving the signed webhooks.

- latency: one new incident per anomaly at a fixed rate; anomaly detected → webhook
  received, p50/p99 (group_wait 0, so this is the pipeline's own delay);
- throughput: a burst of anomalies on distinct metrics; incidents/s from the first publish
  until every incident's webhook has been received.

    python -m bench.alerting [--rate 50] [--count 500] [--burst 2000] [--quick]
"""

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import uvloop
from nats.aio.client import Client

from bench.common import print_table, spawn_driftlock, write_results
from driftlock.alerting.config import Channel, Route, Routing, WebhookConfig
from driftlock.alerting.store import AlertingStore
from driftlock.bus.server import ManagedNatsServer
from driftlock.bus.streams import StreamLimits, ensure_streams
from driftlock.bus.subjects import Subjects
from driftlock.wire.messages import Anomaly, AnomalyKind, json_encoder

PARTITIONS = 8


class Receiver:
    """Records when each webhook arrives, by the anomaly metric it is about."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.port = 0

    async def start(self) -> None:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                length = 0
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":")[1])
                body = json.loads(await reader.readexactly(length))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                if line.startswith(b"POST") and body["change"]["kind"] == "opened":
                    self.arrivals.setdefault(body["incident"]["metrics"][0], time.time())
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def publish(nc: Client, metric: str, seq: int) -> float:
    now = time.time()
    a = Anomaly(
        id=f"bench.{metric}.{seq}.0", tenant="bench", metric=metric, ts=now, value=95.0,
        score=0.9, expected=(40.0, 60.0), kind=AnomalyKind.SPIKE, detectors=["robust_level"],
        seq=seq, index=0, detected_at=now,
    )  # fmt: skip
    await nc.jetstream().publish(
        f"dl.x.anomaly.bench.{metric}", json_encoder.encode(a), headers={"Nats-Msg-Id": a.id}
    )
    return now


async def wait_for(receiver: Receiver, metrics: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(m in receiver.arrivals for m in metrics):
        if time.monotonic() > deadline:
            missing = sum(m not in receiver.arrivals for m in metrics)
            raise RuntimeError(f"{missing} of {len(metrics)} webhooks never arrived")
        await asyncio.sleep(0.01)


async def configure(nc: Client, port: int) -> None:
    store = AlertingStore(nc.jetstream(), "dl")
    await store.start()
    hook = WebhookConfig(url=f"http://127.0.0.1:{port}/hook", secret="bench-secret-0123456789")
    await store.channels.put(
        "bench.hook", Channel(id="hook", tenant="bench", name="b", config=hook)
    )
    route = Route(channels=["hook"], group_wait_s=0.0, resolve_after_s=3600.0)
    await store.routing.put("bench", Routing(route=route))
    await store.stop()


async def main(rate: float, count: int, burst: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = ManagedNatsServer(base_dir=Path(tmp) / "nats", subjects=Subjects(),
                                   partitions=PARTITIONS)  # fmt: skip
        url = await server.start()
        nc = await nats.connect(url)
        await ensure_streams(nc.jetstream(), Subjects(), PARTITIONS,
                             StreamLimits(3600.0, 3600.0, 600.0))  # fmt: skip
        receiver = Receiver()
        await receiver.start()
        await configure(nc, receiver.port)
        args = ["alerter", "--nats-url", url, "--alert-metrics-port", "-1"]
        process, _ = spawn_driftlock(args, Path(tmp) / "alerter", "alerter started")
        try:
            sent: dict[str, float] = {}
            start = time.perf_counter()
            for i in range(count):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent[f"lat{i}"] = await publish(nc, f"lat{i}", i)
            await wait_for(receiver, list(sent), 60)
            latencies = sorted(1000 * (receiver.arrivals[m] - t) for m, t in sent.items())

            metrics = [f"burst{i}" for i in range(burst)]
            began = time.time()
            for i, metric in enumerate(metrics):
                await publish(nc, metric, count + i)
            await wait_for(receiver, metrics, 300)
            elapsed = max(receiver.arrivals[m] for m in metrics) - began
        finally:
            process.terminate()
            process.wait(30)
            await nc.drain()
            server.stop()
    return {
        "rate": rate,
        "count": count,
        "latency_ms": {
            "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "max": latencies[-1],
        },
        "burst": burst,
        "incidents_per_s": burst / elapsed,
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="anomalies/s for latency")
    parser.add_argument("--count", type=int, default=500, help="anomalies for latency")
    parser.add_argument("--burst", type=int, default=2000, help="incidents in the burst")
    parser.add_argument("--quick", action="store_true", help="small run for the test suite")
    args = parser.parse_args()
    if args.quick:
        args.rate, args.count, args.burst = 25.0, 50, 200
    results = uvloop.run(main(args.rate, args.count, args.burst))
    lat = results["latency_ms"]
    print_table(
        "Alerting: anomaly → webhook received (one incident each, group_wait 0)",
        ["measure", "value"],
        [
            [f"latency p50 (ms, {args.count} at {args.rate:g}/s)", lat["p50"]],
            ["latency p99 (ms)", lat["p99"]],
            [f"incidents/s (burst of {args.burst}, until all delivered)",
             results["incidents_per_s"]],
        ],
    )  # fmt: skip
    write_results("alerting-quick" if args.quick else "alerting", results)


if __name__ == "__main__":
    cli()
