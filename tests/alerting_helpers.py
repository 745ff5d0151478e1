"""Real receivers for alerting tests: an HTTP server (Slack and webhook calls) and an SMTP
server (aiosmtpd), plus helpers that put anomalies on DL_ANOMALIES as a node does."""

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

import httpx
import numpy as np
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from nats.aio.client import Client

from driftlock.alerting import Alerter, AlerterConfig
from driftlock.wire.messages import Anomaly, AnomalyKind, anomaly_id, json_encoder


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    """A tiny HTTP/1.1 server on a free port. `accepted` are the requests it answered 2xx
    to (what a sender may count as delivered); `received` are all it read. `status` and
    `hold` make it fail or stall on purpose."""

    status: int = 200
    hold: asyncio.Event | None = None
    received: list[Request] = field(default_factory=list)
    accepted: list[Request] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def on(self, path: str) -> list[Request]:
        return [r for r in self.accepted if r.path == path]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                path = line.split()[1].decode()
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = h.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(path, headers, body, time.time())
                self.received.append(request)
                if self.hold is not None:
                    await self.hold.wait()
                    if await _peer_closed(reader):  # the sender died while we held it
                        return
                writer.write(f"HTTP/1.1 {self.status} X\r\ncontent-length: 2\r\n\r\nok".encode())
                await writer.drain()
                if self.status < 300:
                    self.accepted.append(request)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


async def _peer_closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 0.3) == b""
    except TimeoutError:
        return False


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


class SmtpServer:
    """aiosmtpd on a free port, in its own thread (as aiosmtpd runs it)."""

    def __init__(self, **smtp_parameters: Any) -> None:
        self.mailbox = _Mailbox()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._controller = Controller(
            self.mailbox, hostname="127.0.0.1", port=self.port, **smtp_parameters
        )

    @property
    def messages(self) -> list[Message]:
        return self.mailbox.messages

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()


async def publish_anomaly(
    nc: Client,
    tenant: str,
    metric: str,
    seq: int,
    *,
    score: float = 0.9,
    kind: AnomalyKind = AnomalyKind.SPIKE,
    value: float = 95.0,
    headers: dict[str, str] | None = None,
) -> Anomaly:
    """An anomaly on DL_ANOMALIES exactly as a node publishes it (id as Nats-Msg-Id)."""
    now = time.time()
    a = Anomaly(
        id=anomaly_id(tenant, metric, seq, 0),
        tenant=tenant,
        metric=metric,
        ts=now,
        value=value,
        score=score,
        expected=(40.0, 60.0),
        kind=kind,
        detectors=["robust_level"],
        seq=seq,
        index=0,
        detected_at=now,
    )
    js = nc.jetstream()
    await js.publish(
        f"dl.x.anomaly.{tenant}.{metric}",
        json_encoder.encode(a),
        headers={"Nats-Msg-Id": a.id, **(headers or {})},
    )
    return a


def alerter_config(nats_url: str, link_base_url: str = "http://127.0.0.1:1") -> AlerterConfig:
    """Small durations, so tests wait tenths of a second instead of minutes."""
    return AlerterConfig(
        nats_url=nats_url,
        tick_s=0.05,
        attempts=3,
        backoff_s=0.05,
        send_timeout_s=2.0,
        link_base_url=link_base_url,
    )


@contextlib.asynccontextmanager
async def running_alerter(config: AlerterConfig) -> AsyncIterator[Alerter]:
    alerter = Alerter(config)
    await alerter.start()
    try:
        yield alerter
    finally:
        await alerter.stop(grace_s=2)


@contextlib.asynccontextmanager
async def http_receiver(**kwargs: Any) -> AsyncIterator[HttpReceiver]:
    receiver = HttpReceiver(**kwargs)
    await receiver.start()
    try:
        yield receiver
    finally:
        if receiver.hold is not None:
            receiver.hold.set()
        await receiver.stop()


@contextlib.contextmanager
def smtp_server(**smtp_parameters: Any) -> Iterator[SmtpServer]:
    server = SmtpServer(**smtp_parameters)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def verify_signature(request: Request, secret: str, max_age_s: float = 300) -> None:
    """What a receiver does: recompute the HMAC over timestamp + body, refuse old ones."""
    timestamp = request.headers["x-driftlock-timestamp"]
    assert abs(time.time() - int(timestamp)) < max_age_s, "stale timestamp (replay?)"
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256)
    assert hmac.compare_digest(
        request.headers["x-driftlock-signature"], "sha256=" + mac.hexdigest()
    )


async def spike(nc: Client, tenant: str, metric: str, seed: int = 1) -> None:
    """A stable noisy series then one point far outside it, through a node's ingest subject."""
    rng = np.random.default_rng(seed)
    start = time.time() - 3600
    points = [[start + i, float(50 + v)] for i, v in enumerate(rng.normal(0, 2, 300))]
    await nc.publish(f"dl.in.{tenant}.{metric}", json.dumps(points).encode())
    await nc.publish(f"dl.in.{tenant}.{metric}", json.dumps([start + 300, 95.0]).encode())
    await nc.flush()


async def webhook(
    client: httpx.AsyncClient, auth: dict[str, str], url: str, name: str = "hook"
) -> tuple[str, str]:
    """A webhook channel; its id and generated secret."""
    body = {"name": name, "config": {"type": "webhook", "url": url}}
    created = await post(client, "/v1/alerting/channels", body, auth)
    return created["id"], created["secret"]


def kinds(requests: list[Request]) -> list[tuple[str, str]]:
    """(metric of the first anomaly, change kind) of each webhook call, in arrival order."""
    out = []
    for r in requests:
        body = r.json()
        out.append((body["incident"]["metrics"][0], body["change"]["kind"]))
    return out


async def post(client: httpx.AsyncClient, path: str, body: Any, auth: dict[str, str]) -> Any:
    r = await client.post(path, json=body, headers=auth)
    assert r.status_code in (200, 201), r.text
    return r.json()


async def put(client: httpx.AsyncClient, path: str, body: Any, auth: dict[str, str]) -> Any:
    r = await client.put(path, json=body, headers=auth)
    assert r.status_code == 200, r.text
    return r.json()
