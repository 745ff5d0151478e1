"""The Starlette application: endpoints, health, metrics, OpenAPI, and the pure ASGI
middleware that limits body size, times requests and opens a trace span for each."""

import contextlib
import json
import time
from collections.abc import AsyncIterator

from opentelemetry import context, trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from driftlock import __version__, tracing
from driftlock.alerting.store import AlertingStore
from driftlock.bus.connection import connect, on_reconnected
from driftlock.bus.subjects import Subjects
from driftlock.gateway import (
    admin_api,
    alerting_api,
    anomalies_api,
    auth_api,
    channels_api,
    cluster_api,
    detection_api,
    incidents_api,
    ingest_api,
    metrics_api,
    suppression_api,
)
from driftlock.gateway.anomaly_index import AnomalyIndex
from driftlock.gateway.control import ControlPlane
from driftlock.gateway.errors import (
    ApiError,
    error_body,
    error_response,
    handle_api_error,
    handle_http_exception,
    handle_unexpected,
)
from driftlock.gateway.openapi import openapi_document
from driftlock.gateway.ratelimit import DEFAULT_PLANS, RateLimiter
from driftlock.gateway.router import RememberingRouter
from driftlock.gateway.routing import Endpoint
from driftlock.gateway.service import Gateway
from driftlock.gcfreeze import freeze_long_lived
from driftlock.settings import Settings

ENDPOINTS: list[Endpoint] = [
    *auth_api.ENDPOINTS,
    *admin_api.ENDPOINTS,
    *ingest_api.ENDPOINTS,
    *metrics_api.ENDPOINTS,
    *detection_api.ENDPOINTS,
    *anomalies_api.ENDPOINTS,
    *cluster_api.ENDPOINTS,
    *channels_api.ENDPOINTS,
    *alerting_api.ENDPOINTS,
    *suppression_api.ENDPOINTS,
    *incidents_api.ENDPOINTS,
]


class GatewayApp:
    """Holds the Gateway once the lifespan has connected it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gateway: Gateway | None = None

    def build(self) -> Starlette:
        document = openapi_document(ENDPOINTS, __version__)

        async def healthz(request: Request) -> Response:
            return JSONResponse({"status": "ok"})

        async def readyz(request: Request) -> Response:
            gw = self.gateway
            checks = {
                "nats": gw is not None and gw.nc.is_connected,
                "buckets": gw is not None and await gw.control.reachable(),
            }
            ready = all(checks.values())
            return JSONResponse(
                {"status": "ready" if ready else "not ready", "checks": checks},
                status_code=200 if ready else 503,
            )

        async def metrics(request: Request) -> Response:
            assert self.gateway is not None
            return Response(
                generate_latest(self.gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST
            )

        async def openapi(request: Request) -> Response:
            return JSONResponse(document)

        routes: list[BaseRoute] = [
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/openapi.json", openapi),
        ]
        routes += [_DeferredRoute(e, self) for e in ENDPOINTS]
        app = Starlette(
            exception_handlers={
                ApiError: handle_api_error,
                HTTPException: handle_http_exception,
                Exception: handle_unexpected,
            },
        )
        app.router = RememberingRouter(routes, lifespan=self._lifespan)
        return app

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        s = self.settings
        nc = await connect(s.nats_url, name=f"driftlock-gateway-{s.node_id}")
        js = nc.jetstream()
        control = ControlPlane(js, s.prefix, s.access_token_ttl_s, replicas=s.replicas)
        await control.start()
        alerting = AlertingStore(js, s.prefix, replicas=s.replicas)
        await alerting.start()
        anomalies = AnomalyIndex(nc, js, Subjects(s.prefix), s.anomalies_max_age_s)
        await anomalies.start()
        self.gateway = Gateway(
            settings=s,
            nc=nc,
            js=js,
            control=control,
            limiter=RateLimiter(DEFAULT_PLANS),
            alerting=alerting,
            anomalies=anomalies,
        )

        async def on_reconnect() -> None:
            await control.restart_watches()
            await alerting.restart_watches()
            await anomalies.restart()

        on_reconnected(nc, on_reconnect)
        freeze_long_lived()
        try:
            yield
        finally:
            await anomalies.stop()
            await alerting.stop()
            await control.stop()
            await nc.drain()


class _DeferredRoute(Route):
    """A Route whose endpoint reaches the Gateway created by the lifespan."""

    def __init__(self, endpoint: Endpoint, holder: GatewayApp) -> None:
        async def serve(request: Request) -> Response:
            assert holder.gateway is not None
            return await endpoint.serve(holder.gateway, request)

        super().__init__(endpoint.path, serve, methods=[endpoint.method])


class ObservedApp:
    """Pure ASGI middleware: body size limit (413), request metrics and a trace span; and
    the direct call of an endpoint whose path has no parameters."""

    def __init__(self, app: ASGIApp, holder: GatewayApp, max_body_bytes: int) -> None:
        self.app, self.holder, self.max_body = app, holder, max_body_bytes
        self.tracer = tracing.tracer("driftlock.gateway")
        # Starlette's error middlewares, router and request/response wrappers were a quarter
        # of the samples in a profile of ingest at 1,000 req/s; calling the endpoint directly
        # took the gateway from 0.92 to 0.82-0.87 ms of CPU per ingest request. An endpoint
        # at a fixed path needs none of them: its errors become responses right here,
        # through the same handlers. HEAD, 404s, 405s, templated paths and WebSockets take
        # Starlette's way.
        self.direct = {(e.method, e.path): e for e in ENDPOINTS if "{" not in e.path}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_body:
                    await _too_large(send, self.max_body)
                    return
                break
        started = time.perf_counter()
        status = 500
        route = _route_name(scope, self.holder)

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        gw = self.holder.gateway
        tracer = gw.tracer if gw is not None else self.tracer
        # What start_as_current_span does, without its two context-manager layers.
        span = tracer.start_span(f"{scope['method']} {route}")
        token = context.attach(trace.set_span_in_context(span))
        receive = _limited(receive, self.max_body)
        endpoint = self.direct.get((scope["method"], scope["path"]))
        try:
            if endpoint is not None and gw is not None and not scope.get("root_path"):
                await _serve_direct(endpoint, gw, scope, receive, send_observed)
            else:
                await self.app(scope, receive, send_observed)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            context.detach(token)
            span.set_attribute("http.status_code", status)
            span.end()
            if gw is not None:
                gw.metrics.observe_request(route, scope["method"], status, started)


async def _serve_direct(
    endpoint: Endpoint, gw: Gateway, scope: Scope, receive: Receive, send: Send
) -> None:
    request = Request(scope, receive)
    try:
        response = await endpoint.serve(gw, request)
    except ApiError as exc:
        response = error_response(exc)
    except HTTPException as exc:
        response = await handle_http_exception(request, exc)
    except Exception as exc:
        response = await handle_unexpected(request, exc)
    await response(scope, receive, send)


def _limited(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:  # a chunked body without Content-Length
                raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
        return message

    return wrapped


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps(
        error_body("payload_too_large", f"request body exceeds {limit} bytes")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


_route_names: dict[str, str] = {}
_ROUTE_NAMES_MAX = 10_000


def _route_name(scope: Scope, holder: GatewayApp) -> str:
    """The route template, not the raw path, so metric labels stay bounded (remembered per
    path: matching every template costs more than the rest of a small request's routing)."""
    path: str = scope["path"]
    name = _route_names.get(path)
    if name is None:
        name = _match_route(path)
        if len(_route_names) >= _ROUTE_NAMES_MAX:
            _route_names.clear()
        _route_names[path] = name
    return name


def _match_route(path: str) -> str:
    for e in ENDPOINTS:
        if _matches(e.path, path):
            return e.path
    return path if path in {"/healthz", "/readyz", "/metrics", "/openapi.json"} else "other"


def _matches(template: str, path: str) -> bool:
    t, p = template.strip("/").split("/"), path.strip("/").split("/")
    return len(t) == len(p) and all(a == b or a.startswith("{") for a, b in zip(t, p, strict=True))


def create_app(settings: Settings) -> tuple[ASGIApp, GatewayApp]:
    holder = GatewayApp(settings)
    return ObservedApp(holder.build(), holder, settings.max_body_bytes), holder
