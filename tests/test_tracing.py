"""Traces as an operator gets them: `driftlock up` pointed at an OTLP/HTTP collector (a real
HTTP server here, decoding the protobuf the SDK sends) exports the gateway's request spans and
the node's anomaly spans, and an anomaly's span continues the trace of the ingest request
that carried its point; without an exporter, spans record nothing but still carry the
trace on."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from opentelemetry import propagate, trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from driftlock import tracing
from tests.processes import owner_credentials, start_up

T0 = 1_700_000_000.0


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    scope: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]


class Collector:
    """An OTLP/HTTP trace receiver: POST /v1/traces with an ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = self.path == "/v1/traces"
                if ok:
                    collector.receive(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def receive(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    attributes: dict[str, object] = {}
                    for a in s.attributes:
                        kind = a.value.WhichOneof("value")
                        attributes[a.key] = getattr(a.value, kind) if kind else None
                    self.spans.append(
                        ReceivedSpan(
                            service=resource.get("service.name", ""),
                            scope=scope_spans.scope.name,
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            attributes=attributes,
                        )
                    )

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in list(self.spans) if s.name == name]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


async def test_an_anomaly_span_continues_the_trace_of_the_ingest_request(
    tmp_path: Path, collector: Collector
) -> None:
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms between export batches
    }
    up, banner = await start_up(tmp_path / "data", env=env)
    try:
        gateway_url, email, password = owner_credentials(banner)
        async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
            r = await client.post("/v1/auth/token", json={"email": email, "password": password})
            assert r.status_code == 200, r.text
            auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
            rng = np.random.default_rng(3)
            values = [*(20 + rng.normal(0, 1, 400)), 60.0]
            points = [[T0 + i, float(v)] for i, v in enumerate(values)]
            r = await client.post(
                "/v1/ingest",
                json={"metrics": [{"metric": "traced", "points": points}]},
                headers=auth,
            )
            assert r.status_code == 202, r.text
            anomalies: list[dict[str, object]] = []
            for _ in range(200):
                r = await client.get("/v1/anomalies", params={"metric": "traced"}, headers=auth)
                anomalies = r.json()["anomalies"]
                if anomalies:
                    break
                await asyncio.sleep(0.05)
            assert [a["value"] for a in anomalies] == [60.0]

        for _ in range(200):
            if collector.named("anomaly detected") and collector.named("POST /v1/ingest"):
                break
            await asyncio.sleep(0.05)
        (ingest,) = collector.named("POST /v1/ingest")
        (detected,) = collector.named("anomaly detected")
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(up.wait(), 30) == 0

    assert ingest.service == detected.service == "driftlock"
    assert ingest.scope == "driftlock.gateway" and detected.scope == "driftlock.node"
    assert detected.trace_id == ingest.trace_id
    assert detected.parent_span_id == ingest.span_id
    assert detected.attributes["driftlock.anomaly.id"] == anomalies[0]["id"]
    assert detected.attributes["driftlock.anomaly.kind"] == "spike"
    assert detected.attributes["driftlock.metric"] == "traced"


def test_an_unknown_trace_exporter_is_refused_at_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "driftlock.cli", "node", "--nats-url", "nats://127.0.0.1:1",
            "--data-dir", str(tmp_path), "--metrics-port", "-1",
        ],
        env={**os.environ, "OTEL_TRACES_EXPORTER": "zipkin"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "OTEL_TRACES_EXPORTER='zipkin'" in result.stderr
    assert "otlp, console, none" in result.stderr


def test_without_an_exporter_spans_record_nothing_but_carry_the_trace_on() -> None:
    tracer = tracing.tracer("test")  # no configure_tracing here, as in any embedding program
    root = tracer.start_span("request")
    assert not root.is_recording()
    context = root.get_span_context()
    assert context.is_valid and context.trace_flags.sampled  # downstream exporters keep theirs
    child = tracer.start_span("publish", context=trace.set_span_in_context(root))
    assert child.get_span_context().trace_id == context.trace_id
    assert child.get_span_context().span_id != context.span_id
    with tracer.start_as_current_span("notify", context=trace.set_span_in_context(root)) as span:
        headers: dict[str, str] = {}
        propagate.inject(headers)
        span_id = f"{span.get_span_context().span_id:016x}"
        assert headers["traceparent"] == f"00-{context.trace_id:032x}-{span_id}-01"
    incoming = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-00"}  # a caller's unsampled trace
    remote = tracer.start_span("anomaly", context=propagate.extract(incoming))
    assert f"{remote.get_span_context().trace_id:032x}" == "ab" * 16
    assert not remote.get_span_context().trace_flags.sampled
