"""Serving the gateway with uvicorn inside DriftLock's own event loop and signal handling."""

import asyncio
import contextlib
from collections.abc import Generator

import uvicorn

from driftlock.gateway.app import GatewayApp, create_app
from driftlock.gateway.transport import CorkedHttpToolsProtocol
from driftlock.settings import Settings


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # DriftLock's CLI owns SIGINT/SIGTERM and stops everything in order.
        yield


class GatewayServer:
    def __init__(self, settings: Settings) -> None:
        app, self.holder = create_app(settings)
        config = uvicorn.Config(
            app,
            host=settings.gateway_host,
            port=settings.gateway_port,
            lifespan="on",
            log_level="warning",
            access_log=False,
            loop="none",
            http=CorkedHttpToolsProtocol,
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    @property
    def app(self) -> GatewayApp:
        return self.holder

    async def start(self, timeout: float = 30.0) -> str:
        self._task = asyncio.create_task(self._server.serve(), name="gateway")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("gateway stopped during start-up")
            if loop.time() > deadline:
                raise RuntimeError("gateway did not start in time")
            await asyncio.sleep(0.02)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
