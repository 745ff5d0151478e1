"""Gateway latency under a fixed request rate (open loop): 100-point ingest requests and
anomaly queries, against a `driftlock gateway` process, a node process and nats-server.

    python -m bench.gateway [--rate 1000] [--seconds 10] [--quick]
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvloop

from bench.common import print_table, spawn_driftlock, write_results
from bench.pipeline import PARTITIONS, start_node
from driftlock.bus.server import ManagedNatsServer
from driftlock.bus.subjects import Subjects
from driftlock.gateway.admin import create_tenant_once
from driftlock.settings import load_settings


def start_gateway(url: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    args = ["gateway", "--nats-url", url, "--gateway-port", "0", "--partitions", str(PARTITIONS)]
    process, record = spawn_driftlock(args, data_dir, "gateway started")
    return process, str(record["url"])


async def open_loop(
    client: httpx.AsyncClient, rate: float, seconds: float, request: Any
) -> tuple[list[float], int]:
    """Fire `request` at a fixed rate regardless of answers; latencies in ms, and errors."""
    latencies: list[float] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        started = time.perf_counter()
        r = await request(client)
        latencies.append(1000 * (time.perf_counter() - started))
        errors += r.status_code >= 400

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return latencies, errors


async def main(rate: float, seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {"rate": rate, "seconds": seconds}
    with tempfile.TemporaryDirectory() as tmp:
        server = ManagedNatsServer(
            base_dir=Path(tmp) / "nats", subjects=Subjects(), partitions=PARTITIONS
        )
        url = await server.start()
        node, _ = start_node(url, Path(tmp) / "node")
        gateway, base = start_gateway(url, Path(tmp) / "gw")
        try:
            creds = await create_tenant_once(
                load_settings(nats_url=url), "bench", "bench@example.com", "unlimited"
            )
            async with httpx.AsyncClient(
                base_url=base, timeout=30, limits=httpx.Limits(max_connections=64)
            ) as client:
                r = await client.post(
                    "/v1/auth/token", json={"email": creds.email, "password": creds.password}
                )
                auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
                t0 = time.time() - 3600
                body = json.dumps(
                    {
                        "metrics": [
                            {
                                "metric": "m0",
                                "points": [[t0 + i, float(i % 10)] for i in range(100)],
                            }
                        ]
                    }
                ).encode()

                async def ingest(c: httpx.AsyncClient) -> httpx.Response:
                    return await c.post("/v1/ingest", content=body, headers=auth)

                async def query(c: httpx.AsyncClient) -> httpx.Response:
                    return await c.get("/v1/anomalies", params={"limit": 10}, headers=auth)

                rows = []
                for name, request in (("ingest 100 points", ingest), ("anomaly query", query)):
                    latencies, errors = await open_loop(client, rate, seconds, request)
                    q = statistics.quantiles(latencies, n=100)
                    results[name] = {
                        "p50_ms": q[49],
                        "p95_ms": q[94],
                        "p99_ms": q[98],
                        "errors": errors,
                    }
                    rows.append(
                        [
                            name,
                            rate,
                            len(latencies),
                            f"{q[49]:.1f}",
                            f"{q[94]:.1f}",
                            f"{q[98]:.1f}",
                            errors,
                        ]
                    )
        finally:
            for process in (gateway, node):
                process.terminate()
                process.wait(30)
            server.stop()
    print_table(
        "Gateway latency at a fixed request rate (ms)",
        ["request", "req/s", "requests", "p50", "p95", "p99", "errors"],
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
    args = parser.parse_args()
    rate, seconds = (100.0, 1.0) if args.quick else (args.rate, args.seconds)
    results = uvloop.run(main(rate, seconds))
    print("wrote", write_results("gateway-quick" if args.quick else "gateway", results))


if __name__ == "__main__":
    cli()
