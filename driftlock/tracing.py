"""Where a process's spans go, decided by OpenTelemetry's own environment variables, as in
any OTel SDK: an operator who has traced one service knows how to trace DriftLock.

- `OTEL_TRACES_EXPORTER=otlp`, or `OTEL_EXPORTER_OTLP_ENDPOINT` /
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set: OTLP over HTTP (protobuf), batched in the
  background, never on a request's or a batch's path.
- `OTEL_TRACES_EXPORTER=console`: one JSON document per span on stdout, for a quick look.
- Neither, or `none`: spans record nothing, but each still has real ids, so trace context
  still travels from a request into NATS headers and on to alert receivers (sampled, as an
  exporting span would be: a downstream service that exports keeps its part of the trace).

`OTEL_SERVICE_NAME` renames the service; the rest (`OTEL_EXPORTER_OTLP_HEADERS`, timeouts,
`OTEL_BSP_*` batching) is read by the exporter and the batch processor themselves.
"""

import contextlib
import os
from collections.abc import Iterator, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.util.types import Attributes

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


def configure_tracing(service: str) -> TracerProvider | None:
    """Installs this process's tracer provider (once: OTel keeps the first one); none when
    nothing would export, so `tracer` hands out non-recording spans."""
    exporter = chosen_exporter()
    if exporter == "none":
        return None
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    if exporter == "otlp":
        # Imported here: only a process that exports pays for protobuf and requests.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def tracer(name: str) -> trace.Tracer:
    """A tracer of the configured provider when it exports; otherwise (no exporter, or no
    `configure_tracing`, as when DriftLock runs inside another program or a test) one whose
    spans record nothing but carry real ids, so trace context propagates all the same
    (OTel's default no-op spans would not)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        return provider.get_tracer(name)
    return _PROPAGATING


class _PropagatingTracer(trace.Tracer):
    """Non-recording spans with fresh span ids under the current trace (or a new one).
    Recording a span nobody exports was a tenth of a gateway request's CPU."""

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid:
            trace_id, flags, state = parent.trace_id, parent.trace_flags, parent.trace_state
        else:
            trace_id, flags, state = _ids.generate_trace_id(), _SAMPLED, None
        span_id = _ids.generate_span_id()
        return trace.NonRecordingSpan(trace.SpanContext(trace_id, span_id, False, flags, state))

    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]  # the API's is a private variant
        self,
        name: str,
        context: Context | None = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context)
        with trace.use_span(span, end_on_exit=end_on_exit) as current:
            yield current


_ids = RandomIdGenerator()
_SAMPLED = trace.TraceFlags(trace.TraceFlags.SAMPLED)
_PROPAGATING = _PropagatingTracer()
