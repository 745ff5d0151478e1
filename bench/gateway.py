"""Gateway latency under a fixed request rate (open loop): 100-point ingest requests and
anomaly queries, against a `driftlock gateway` process, a node process and nats-server.
Ingest is measured twice: with the node paused (the gateway and nats-server alone on the
machine), and with the node detecting what comes in on the same cores. Each row also gives
the gateway's CPU time per request.

    python -m bench.gateway [--rate 1000] [--seconds 10] [--quick]

The load generator shares the machine's cores with what it measures, so it is a lean
HTTP/1.1 client: pre-rendered requests over a pool of keep-alive connections, each request
sent at its scheduled time whether or not earlier ones were answered. A request's latency
runs from its scheduled time (not from when a connection was free), so a saturated gateway
shows as queueing, not as a lower rate; the achieved rate is reported next to the target.
"""

import argparse
import asyncio
import collections
import gc
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import numpy as np
import uvloop

from bench.common import print_table, scrape_counter, spawn_driftlock, write_results
from bench.pipeline import PARTITIONS, start_node
from driftlock.bus.server import ManagedNatsServer
from driftlock.bus.subjects import Subjects
from driftlock.gateway.admin import create_tenant_once
from driftlock.settings import load_settings

MAX_CONNECTIONS = 64
SEEDED_METRICS = 5
INGEST_METRICS = 100
PAUSED_INGEST = "ingest 100 points, node paused"
"""Ingest with the node stopped (SIGSTOP), its events left in the stream until it resumes:
the gateway and nats-server alone on the machine, as where gateways and nodes run on
machines of their own. The plain ingest row has the node detecting on the same cores."""


def start_gateway(url: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    args = ["gateway", "--nats-url", url, "--gateway-port", "0", "--partitions", str(PARTITIONS)]
    process, record = spawn_driftlock(args, data_dir, "gateway started")
    return process, str(record["url"])


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_request(method: str, target: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; answers carry a
    Content-Length (the gateway's JSON responses all do)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.lost = False
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.answered = True
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[: end + 2]).lower()  # every header line ends with CRLF
        at = head.find(b"\r\ncontent-length:")
        length = int(head[at + 17 : head.find(b"\r\n", at + 2)]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        status = int(self.buffer[9:12])
        del self.buffer[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.answered = False
        self.transport.write(request)
        return await self.waiter


class LoadClient:
    """A pool of keep-alive connections to one host, opened on demand up to a cap."""

    def __init__(self, base_urls: list[str], max_connections: int = MAX_CONNECTIONS) -> None:
        self.servers = [(u.hostname or "127.0.0.1", u.port or 80) for u in map(urlsplit, base_urls)]
        self.idle: list[_Connection] = []
        self.opened = 0
        self.max = max_connections
        self.waiting: collections.deque[asyncio.Future[_Connection]] = collections.deque()

    async def _acquire(self) -> _Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.lost:
                return conn
            self.opened -= 1
        if self.opened < self.max:
            self.opened += 1
            try:
                host, port = self.servers[self.opened % len(self.servers)]  # as a balancer
                _, conn = await asyncio.get_running_loop().create_connection(
                    _Connection, host, port
                )
            except BaseException:
                self.opened -= 1
                raise
            return conn
        waiter: asyncio.Future[_Connection] = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        return await waiter

    def _release(self, conn: _Connection) -> None:
        if conn.lost:
            self.opened -= 1
            return
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    async def send(self, request: bytes) -> int:
        for attempt in range(2):
            conn = await self._acquire()
            try:
                return await conn.send(request)
            except ConnectionError:
                # The server may close an idle keep-alive connection just as a request goes
                # out on it; like any HTTP client, send it again once on another connection.
                if attempt or conn.answered:
                    raise
            finally:
                self._release(conn)
        raise AssertionError("unreachable")

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


async def open_loop(
    client: LoadClient, rate: float, seconds: float, requests: Sequence[bytes]
) -> tuple[list[float], collections.Counter[int], float]:
    """Send the requests in turn at a fixed rate regardless of answers: latencies in ms
    (from each request's scheduled time), errors, and the rate actually sent."""
    latencies: list[float] = []
    failed: collections.Counter[int] = collections.Counter()
    clock = time.perf_counter  # uvloop's loop.time() only has millisecond resolution

    async def one(scheduled: float, request: bytes) -> None:
        try:
            status = await client.send(request)
        except OSError:
            status = 599
        latencies.append(1000 * (clock() - scheduled))
        if status >= 400:
            failed[status] += 1  # 599: the connection failed

    tasks = []
    start = clock()
    total = int(rate * seconds)
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled, requests[i % len(requests)])))
    sent_in = clock() - start
    await asyncio.gather(*tasks)
    return latencies, failed, (total - 1) / sent_in if total > 1 else rate


async def settle(
    metrics_port: int, quiet_s: float = 1.0, limit_s: float = 300
) -> tuple[float, float]:
    """Wait until the node has applied everything ingested (its applied-events counter has
    stood still for `quiet_s`); how long that took, and the points applied so far."""
    started = time.perf_counter()
    last, still_since = -1.0, started
    while time.perf_counter() - still_since < quiet_s and time.perf_counter() - started < limit_s:
        applied = await asyncio.to_thread(
            scrape_counter, metrics_port, "driftlock_events_applied_total"
        )
        if applied != last:
            last, still_since = applied, time.perf_counter()
        await asyncio.sleep(0.1)
    return time.perf_counter() - started - quiet_s, last


def ingest_bodies(count: int) -> list[bytes]:
    """100-point requests as producers send them: each for one of INGEST_METRICS metrics in
    turn, every metric's timestamps one second apart and moving on request by request."""
    rng = np.random.default_rng(5)
    t0 = time.time() - 3600 - count // INGEST_METRICS * 100
    bodies = []
    for i in range(count):
        round_, metric = divmod(i, INGEST_METRICS)
        ts = t0 + round_ * 100 + np.arange(100)
        values = 50 + rng.normal(0, 2, 100)
        points = [[t, v] for t, v in zip(ts.tolist(), values.tolist(), strict=True)]
        bodies.append(
            json.dumps({"metrics": [{"metric": f"load{metric}", "points": points}]}).encode()
        )
    return bodies


async def seed_anomalies(client: httpx.AsyncClient, auth: dict[str, str]) -> int:
    """A few streams with a spike each, so the queries return real pages; how many
    anomalies a page then holds."""
    rng = np.random.default_rng(3)
    t0 = time.time() - 7200
    for k in range(SEEDED_METRICS):
        metric = f"seeded{k}"
        points = [[t0 + i, float(v)] for i, v in enumerate(20 + rng.normal(0, 1, 500))]
        for batch in (points, [[t0 + 500, 45.0]]):
            r = await client.post(
                "/v1/ingest", json={"metrics": [{"metric": metric, "points": batch}]}, headers=auth
            )
            r.raise_for_status()
    found = 0
    for _ in range(300):
        r = await client.get("/v1/anomalies", params={"limit": 10}, headers=auth)
        found = len(r.json()["anomalies"])
        if found >= SEEDED_METRICS:
            break
        await asyncio.sleep(0.1)
    return found


async def measure(
    client: LoadClient,
    processes: list[subprocess.Popen[bytes]],
    requests: list[bytes],
    rate: float,
    seconds: float,
    *,
    pause_node: bool,
) -> dict[str, Any]:
    """One open-loop phase: latency quantiles, errors, and CPU per request of the gateway
    processes and of the node (the last process)."""
    node = processes[-1]
    await client.send(requests[0])  # a warm connection and a warm route
    cpu_before = [cpu_seconds(p.pid) for p in processes]
    if pause_node:
        node.send_signal(signal.SIGSTOP)
    gc.collect()  # the load generator's own pauses are not the gateway's
    gc.disable()
    try:
        latencies, failed, achieved = await open_loop(client, rate, seconds, requests)
    finally:
        gc.enable()
        node.send_signal(signal.SIGCONT)
    cpu = [cpu_seconds(p.pid) - c for p, c in zip(processes, cpu_before, strict=True)]
    q = statistics.quantiles(latencies, n=100)
    return {
        "p50_ms": q[49],
        "p95_ms": q[94],
        "p99_ms": q[98],
        "requests": len(latencies),
        "errors": sum(failed.values()),
        "errors_by_status": {str(k): v for k, v in sorted(failed.items())},
        "achieved_rate": achieved,
        "gateway_cpu_ms_per_request": 1000 * sum(cpu[:-1]) / len(latencies),
        "node_cpu_ms_per_request": 1000 * cpu[-1] / len(latencies),
    }


async def main(rate: float, seconds: float, gateways: int = 1) -> dict[str, Any]:
    results: dict[str, Any] = {"rate": rate, "seconds": seconds, "gateways": gateways}
    with tempfile.TemporaryDirectory() as tmp:
        server = ManagedNatsServer(
            base_dir=Path(tmp) / "nats", subjects=Subjects(), partitions=PARTITIONS
        )
        url = await server.start()
        node, (node_metrics,) = start_node(url, Path(tmp) / "node")
        started = [start_gateway(url, Path(tmp) / f"gw{i}") for i in range(gateways)]
        base = started[0][1]
        processes = [*(p for p, _ in started), node]  # the node last, as measure() takes it
        try:
            creds = await create_tenant_once(
                load_settings(nats_url=url), "bench", "bench@example.com", "unlimited"
            )
            async with httpx.AsyncClient(base_url=base, timeout=30) as login:
                r = await login.post(
                    "/v1/auth/token", json={"email": creds.email, "password": creds.password}
                )
                auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
                results["anomalies_per_page"] = await seed_anomalies(login, auth)
            ingest_headers = {**auth, "Content-Type": "application/json"}
            count = int(rate * seconds)
            ingest = [
                http_request("POST", "/v1/ingest", ingest_headers, body)
                for body in ingest_bodies(2 * count)
            ]
            requests = {
                PAUSED_INGEST: ingest[:count],
                "ingest 100 points": ingest[count:],
                "anomaly query": [http_request("GET", "/v1/anomalies?limit=10", auth)],
            }
            client = LoadClient([b for _, b in started])
            rows = []
            try:
                for name, request in requests.items():
                    # Each kind on its own: the node first finishes what earlier ingest sent.
                    waited, applied = await settle(node_metrics)
                    results[f"node settled before {name}"] = {"s": waited, "points": applied}
                    results[name] = await measure(
                        client, processes, request, rate, seconds, pause_node=name == PAUSED_INGEST
                    )
                    got = results[name]
                    rows.append(
                        [name, rate, got["achieved_rate"], got["requests"], f"{got['p50_ms']:.1f}",
                         f"{got['p95_ms']:.1f}", f"{got['p99_ms']:.1f}",
                         f"{got['gateway_cpu_ms_per_request']:.2f}",
                         f"{got['errors']} {got['errors_by_status']}" if got["errors"] else 0]
                    )  # fmt: skip
            finally:
                client.close()
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)
            server.stop()
    print(f"anomaly queries return pages of {results['anomalies_per_page']} anomalies")
    for key, value in results.items():
        if key.startswith("node settled"):
            print(f"{key} in {value['s']:.1f} s, {value['points']:,.0f} points applied")
    print_table(
        f"Gateway latency at a fixed request rate (ms), {gateways} gateway process(es)",
        [
            "request",
            "req/s",
            "sent req/s",
            "requests",
            "p50",
            "p95",
            "p99",
            "gateway CPU ms/req",
            "errors",
        ],
        rows,
    )
    return results


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--quick", action="store_true", help="100 req/s for 1 s")
    parser.add_argument(
        "--gateways", type=int, default=1, help="gateway processes, connections spread over them"
    )
    args = parser.parse_args()
    rate, seconds = (100.0, 1.0) if args.quick else (args.rate, args.seconds)
    results = uvloop.run(main(rate, seconds, args.gateways))
    name = "gateway-quick" if args.quick else "gateway"
    if args.gateways > 1:
        name += f"-{args.gateways}gw"
    print("wrote", write_results(name, results))


if __name__ == "__main__":
    cli()
