"""Where a process's spans go, decided by OpenTelemetry's own environment variables, as in
any OTel SDK: an operator who has traced one service knows how to trace DriftLock.

- `OTEL_TRACES_EXPORTER=otlp`, or `OTEL_EXPORTER_OTLP_ENDPOINT` /
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set: OTLP over HTTP (protobuf), batched in the
  background, never on a request's or a batch's path.
- `OTEL_TRACES_EXPORTER=console`: one JSON document per span on stdout, for a quick look.
- Neither, or `none`: spans are still made, so trace context still travels from a request
  into NATS headers and on to alert receivers, but they go nowhere.

`OTEL_SERVICE_NAME` renames the service; the rest (`OTEL_EXPORTER_OTLP_HEADERS`, timeouts,
`OTEL_BSP_*` batching) is read by the exporter and the batch processor themselves.
"""

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

from driftlock.errors import ConfigError

TRACEPARENT = "traceparent"
TRACE_KEYS = (TRACEPARENT, "tracestate")
"""The W3C trace-context headers, as OTel's default propagator writes them."""
EXPORTERS = ("otlp", "console", "none")
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def chosen_exporter() -> str:
    """The exporter the environment asks for; a value OTel does not know is refused here,
    at start-up, rather than silently tracing nowhere."""
    named = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        return "otlp" if any(os.environ.get(v) for v in _ENDPOINT_VARIABLES) else "none"
    if named not in EXPORTERS:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={named!r}: DriftLock exports traces with one of "
            f"{', '.join(EXPORTERS)}"
        )
    return named


def configure_tracing(service: str) -> TracerProvider:
    """Installs this process's tracer provider (once: OTel keeps the first one)."""
    exporter = chosen_exporter()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    if exporter == "otlp":
        # Imported here: only a process that exports pays for protobuf and requests.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


_unexported = TracerProvider()


def tracer(name: str) -> trace.Tracer:
    """A tracer of the configured provider; before (or without) `configure_tracing`, as when
    DriftLock runs inside another program or a test, one whose spans go nowhere but still
    carry real ids, so trace context propagates all the same (OTel's default would not)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = _unexported
    return provider.get_tracer(name)
