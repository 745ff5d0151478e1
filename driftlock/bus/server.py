"""A nats-server child process with JetStream, for `driftlock up` and the tests."""

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from driftlock.bus.nats_config import ClusterRoutes, managed_server_config
from driftlock.bus.subjects import Subjects
from driftlock.errors import NatsServerError

NATS_SERVER_ENV = "DRIFTLOCK_NATS_SERVER"


def _die_with_parent() -> None:
    """Linux: SIGTERM the server if DriftLock dies without stopping it (kill -9), so no
    orphaned nats-server keeps the port and the store."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


RECOMMENDED_VERSION = (2, 10)


def version_warning(major: int, minor: int) -> str | None:
    """What to tell an operator whose nats-server is older than DriftLock wants."""
    if (major, minor) >= RECOMMENDED_VERSION:
        return None
    return (
        f"nats-server {major}.{minor} stalls once DL_EVENTS holds a few hundred thousand "
        "distinct streams (~100,000 per node); use 2.10 or newer (`make setup` installs it)"
    )


def find_nats_server() -> str:
    """$DRIFTLOCK_NATS_SERVER, else the project's copy beside this Python (`make setup` puts
    Debian 13's 2.10 there), else nats-server on PATH."""
    explicit = os.environ.get(NATS_SERVER_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise NatsServerError(f"{NATS_SERVER_ENV}={explicit} is not an executable file")
        return explicit
    project_copy = Path(sys.executable).parent / "nats-server"
    if os.access(project_copy, os.X_OK):
        return str(project_copy)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            "nats-server not found: run `make setup` (installs Debian's nats-server) "
            f"or set {NATS_SERVER_ENV} to a nats-server >= 2.9 binary"
        )
    return found


@dataclass
class ManagedNatsServer:
    """Starts nats-server with config and store under `base_dir`; `url` is known once started."""

    base_dir: Path
    subjects: Subjects
    partitions: int
    host: str = "127.0.0.1"
    port: int = -1
    cluster: ClusterRoutes | None = None
    url: str = ""
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.base_dir / "nats.conf"

    @property
    def store_dir(self) -> Path:
        return self.base_dir / "jetstream"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "nats-server.log"

    async def start(self, timeout: float = 15.0) -> str:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            managed_server_config(
                subjects=self.subjects,
                partitions=self.partitions,
                host=self.host,
                port=self.port,
                store_dir=self.store_dir,
                cluster=self.cluster,
            )
        )
        ports_dir = self.base_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        binary = find_nats_server()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [binary, "-c", str(self.config_path), "--ports_file_dir", str(ports_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches DriftLock, which stops it in order
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (one async-signal-safe prctl call)
            )
        try:
            self.url = await self._wait_for_ports_file(ports_dir, binary, timeout)
            # A restart keeps the port, so clients reconnect to the same URL.
            self.port = int(self.url.rsplit(":", 1)[1])
            await self._wait_until_accepting(timeout)
        except BaseException:
            self.stop()  # a caller that sees start fail has no server to stop
            raise
        return self.url

    async def _wait_for_ports_file(self, ports_dir: Path, binary: str, timeout: float) -> str:
        assert self._process is not None
        ports_file = ports_dir / f"{Path(binary).name}_{self._process.pid}.ports"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with code {self._process.returncode}; see {self.log_path}"
                )
            if ports_file.exists():
                with contextlib.suppress(ValueError):
                    urls: list[str] = json.loads(ports_file.read_text())["nats"]
                    return urls[0]
            await asyncio.sleep(0.02)
        raise NatsServerError(f"nats-server did not start within {timeout}s; see {self.log_path}")

    async def _wait_until_accepting(self, timeout: float) -> None:
        host, port = self.url.removeprefix("nats://").rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise NatsServerError(f"nats-server at {self.url} did not accept connections")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (nats-server flushes JetStream), then SIGKILL if it does not exit in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL, for tests of crash behaviour."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
