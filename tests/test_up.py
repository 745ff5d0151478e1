"""`driftlock up` as a user runs it: the banner, the README's examples against it, and a clean
stop on SIGTERM that commits state and takes nats-server down with it."""

import asyncio
import os
import re
import signal
import sys
import textwrap
from pathlib import Path

import httpx

from driftlock.bus.partition import partition_of
from driftlock.state import StateStore
from tests.processes import owner_credentials, start_up

ROOT = Path(__file__).resolve().parent.parent


def readme_example(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert found, f"README example {name!r} not found"
    return found.group(1)


def banner_snippets(banner: str) -> list[str]:
    return [textwrap.dedent(s) for s in re.findall(r"<<'EOF'\n(.*?)\n\s*EOF", banner, re.S)]


async def python(code: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_up_runs_the_readme_examples_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    up, banner = await start_up(data_dir)
    try:
        url = re.search(r"NATS\s+(nats://[\d.]+:\d+)", banner)
        assert url, banner
        nats_url = url.group(1)
        assert re.search(r"metrics\s+http://127\.0\.0\.1:\d+/metrics", banner)

        # The banner's own snippets run as printed.
        publish_one, subscribe_banner = banner_snippets(banner)
        assert nats_url in publish_one and nats_url in subscribe_banner
        one = await python(publish_one)
        assert await asyncio.wait_for(one.wait(), 30) == 0

        # The README's examples, pointed at this server.
        subscriber = await python(
            readme_example("subscribe").replace("nats://127.0.0.1:4222", nats_url)
        )
        assert subscriber.stdout is not None
        await asyncio.sleep(1.0)  # subscribed before the spike is published
        publisher = await python(
            readme_example("publish").replace("nats://127.0.0.1:4222", nats_url)
        )
        assert await asyncio.wait_for(publisher.wait(), 30) == 0
        received = (await asyncio.wait_for(subscriber.stdout.readline(), 10)).decode()
        subscriber.kill()
        await subscriber.wait()
        assert received.startswith("dl.anomaly.default.latency ")
        assert '"kind":"spike"' in received and '"value":95.0' in received

        # The gateway printed next to NATS, with the first owner's credentials, shown once.
        gateway_url, email, password = owner_credentials(banner)
        async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
            r = await client.post("/v1/auth/token", json={"email": email, "password": password})
            assert r.status_code == 200, r.text
            auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
            r = await client.get("/v1/anomalies", params={"metric": "latency"}, headers=auth)
            assert [a["value"] for a in r.json()["anomalies"]] == [95.0]

        ports = list((data_dir / "nats" / "ports").glob("*.ports"))
        nats_pid = int(ports[0].name.rsplit("_", 1)[1].removesuffix(".ports"))
        assert alive(nats_pid)
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(up.wait(), 30)
    assert code == 0
    assert not alive(nats_pid)
    assert (data_dir / "nats" / "nats.conf").exists()
    assert (data_dir / "nats" / "jetstream").is_dir()

    store = StateStore(data_dir / "state")
    try:
        p = partition_of("default", "latency", 64)
        record = store.read_actor(p, "default", "latency")
        assert record is not None and record.points == 301 and record.anomalies == 1
        assert store.read_meta(p).last_applied_seq > 0
        cpu = store.read_actor(partition_of("default", "cpu", 64), "default", "cpu")
        assert cpu is not None and cpu.last_value == 0.93
    finally:
        store.close()
