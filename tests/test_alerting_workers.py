"""Exactly once to the outside with several alerting workers: two workers share the
anomaly stream and the incidents and still send one notification per incident change per
channel; a worker killed (kill -9) in the middle of a send is taken over by another after
its lease, with the same notification id, and nothing is lost or sent twice; a restarted
worker does not send again what was sent."""

import asyncio
import dataclasses
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import msgspec
from nats.aio.client import Client

from driftlock.bus.server import ManagedNatsServer
from driftlock.gateway.server import GatewayServer
from driftlock.wire.messages import json_encoder
from tests.alerting_helpers import (
    alerter_config,
    http_receiver,
    kinds,
    publish_anomaly,
    put,
    running_alerter,
    verify_signature,
    webhook,
)
from tests.conftest import eventually
from tests.gateway_helpers import new_tenant


async def test_two_workers_send_each_change_once(
    gateway: GatewayServer, nc: Client, nats_server: ManagedNatsServer
) -> None:
    async with (
        http_receiver() as web,
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
    ):
        owner = await new_tenant(gateway, client, "acme")
        hook, secret = await webhook(client, owner.auth, f"{web.url}/hook")
        await put(client, "/v1/alerting/routes", {
            # group_wait far above how long 40 publishes and pulls take on a busy machine
            "route": {"channels": [hook], "group_wait_s": 2.0, "resolve_after_s": 3.0},
        }, owner.auth)  # fmt: skip
        # One anomaly per pull, so both workers take part in the intake too.
        config = dataclasses.replace(alerter_config(nats_server.url, gateway.url), fetch_batch=1)
        async with running_alerter(config) as one, running_alerter(config) as two:
            for seq in range(40):  # 20 metrics, two anomalies each
                await publish_anomaly(nc, "acme", f"m{seq % 20}", seq)

            def all_resolved() -> bool:
                return len(web.accepted) >= 40

            await eventually(all_resolved, timeout=30)
            await asyncio.sleep(1.0)
            seen = Counter(kinds(web.accepted))
            assert len(web.accepted) == 40, seen
            assert set(seen.values()) == {1}
            assert {k for _, k in seen} == {"opened", "resolved"}
            for request in web.accepted:
                verify_signature(request, secret)
            opened = [r.json() for r in web.accepted if r.json()["change"]["kind"] == "opened"]
            # group_wait gathered both anomalies of a metric into its one incident
            assert {o["incident"]["anomaly_count"] for o in opened} == {2}
            sent = [
                a.metrics.notifications.labels("webhook", "sent")._value.get() for a in (one, two)
            ]
            assert sum(sent) == 40
            routed = [a.metrics.anomalies.labels("routed")._value.get() for a in (one, two)]
            assert sum(routed) == 40 and min(routed) > 0, routed


class AlerterProcess:
    def __init__(self, nats_url: str, gateway_url: str, log: Path, name: str) -> None:
        self.log = log
        self.args = [
            sys.executable, "-m", "driftlock.cli", "alerter", "--nats-url", nats_url,
            "--node-id", name, "--alert-metrics-port", "-1", "--alert-tick-s", "0.05",
            "--alert-send-attempts", "2", "--alert-send-timeout-s", "1",
            "--alert-backoff-s", "0.1", "--alert-link-base-url", gateway_url,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)
        for _ in range(600):
            if b'"alerter started"' in self.log.read_bytes()[offset:]:
                return
            assert self.process.poll() is None, self.log.read_text()
            await asyncio.sleep(0.05)
        raise AssertionError(f"alerter did not start: {self.log.read_text()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def ensure_stopped(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def test_worker_killed_mid_send_is_taken_over_without_loss_or_duplicate(
    gateway: GatewayServer, nc: Client, nats_server: ManagedNatsServer, tmp_path: Path
) -> None:
    hold = asyncio.Event()
    first = AlerterProcess(nats_server.url, gateway.url, tmp_path / "a.log", "worker-a")
    second = AlerterProcess(nats_server.url, gateway.url, tmp_path / "b.log", "worker-b")
    async with (
        http_receiver(hold=hold) as web,
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
    ):
        owner = await new_tenant(gateway, client, "acme")
        hook, _ = await webhook(client, owner.auth, f"{web.url}/hook")
        await put(client, "/v1/alerting/routes", {
            "route": {"channels": [hook], "group_wait_s": 0, "resolve_after_s": 600},
        }, owner.auth)  # fmt: skip
        try:
            await first.start()
            await publish_anomaly(nc, "acme", "before", 1)

            def in_flight() -> bool:
                return len(web.received) == 1

            await eventually(in_flight, timeout=10)  # worker A is inside its HTTP call
            first.kill()
            hold.set()
            # Published while no worker runs: the durable consumer keeps it for the next.
            await publish_anomaly(nc, "acme", "between", 2)
            await second.start()

            def both_delivered() -> bool:
                return len(web.accepted) == 2

            await eventually(both_delivered, timeout=30)  # after A's lease expired
            assert sorted(kinds(web.accepted)) == [("before", "opened"), ("between", "opened")]
            ids = [r.headers["x-driftlock-notification-id"] for r in web.received]
            # A's unanswered attempt and B's retry carry one id: a receiver can deduplicate
            # even the one case no sender can rule out (delivered, then killed before
            # recording it).
            before = [i for i, r in zip(ids, web.received, strict=True) if r.json()[
                "incident"]["metrics"] == ["before"]]  # fmt: skip
            assert len(before) == 2 and len(set(before)) == 1
            assert "taking over an expired send" in (tmp_path / "b.log").read_text()

            # A restart sends nothing again.
            assert second.terminate() == 0
            await second.start()
            await asyncio.sleep(1.5)
            assert len(web.received) == 3 and len(web.accepted) == 2
        finally:
            first.ensure_stopped()
            second.ensure_stopped()


async def test_bad_messages_on_the_stream_are_counted_and_skipped(
    gateway: GatewayServer, nc: Client, nats_server: ManagedNatsServer
) -> None:
    async with (
        http_receiver() as web,
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
        running_alerter(alerter_config(nats_server.url, gateway.url)) as alerter,
    ):
        owner = await new_tenant(gateway, client, "acme")
        hook, _ = await webhook(client, owner.auth, f"{web.url}/hook")
        await put(client, "/v1/alerting/routes", {
            "route": {"channels": [hook], "group_wait_s": 0, "resolve_after_s": 60},
        }, owner.auth)  # fmt: skip
        js = nc.jetstream()
        await js.publish("dl.x.anomaly.acme.junk", b"{not json")
        await js.publish("dl.x.anomaly.acme.junk", b'{"id": 1}')
        good = await publish_anomaly(nc, "acme", "good", 1)
        bad_tenant = msgspec.structs.replace(good, id="x", tenant="no spaces allowed")
        await js.publish("dl.x.anomaly.acme.bad", json_encoder.encode(bad_tenant))
        await publish_anomaly(nc, "acme", "after", 2)

        def both_good_ones() -> bool:
            return len(web.accepted) == 2

        await eventually(both_good_ones, timeout=10)
        assert sorted(kinds(web.accepted)) == [("after", "opened"), ("good", "opened")]
        rejects = alerter.metrics.rejects
        assert rejects.labels("malformed")._value.get() == 2
        assert rejects.labels("invalid_tenant")._value.get() == 1
