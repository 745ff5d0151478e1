"""Real `driftlock node` processes for tests that kill, restart and compare them."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTABLE = {
    "partition acquired",
    "partition released",
    "partition resumed",
    "resetting partition consumer",
    "consumer creation timed out; retrying",
}


async def start_up(
    data_dir: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> tuple[asyncio.subprocess.Process, str]:
    """`driftlock up` on free ports, as a user starts it: the process, and its banner up to
    the first owner's password (printed once the node holds its partitions)."""
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "driftlock.cli", "up",
        "--data-dir", str(data_dir), "--nats-port", "-1", "--metrics-port", "0",
        "--gateway-port", "0", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert up.stdout is not None
    banner = ""
    try:
        while "password" not in banner:
            line = await asyncio.wait_for(up.stdout.readline(), timeout)
            assert line, "driftlock up exited before printing its banner"
            banner += line.decode()
    except BaseException:
        up.kill()
        await up.wait()
        raise
    return up, banner


def owner_credentials(banner: str) -> tuple[str, str, str]:
    """The gateway URL, and the first owner's e-mail and password, from `up`'s banner."""
    gateway_url = re.search(r"Gateway\s+(http://[\d.]+:\d+)", banner)
    email = re.search(r"email\s+(\S+)", banner)
    password = re.search(r"password\s+(\S+)", banner)
    assert gateway_url and email and password, banner
    return gateway_url.group(1), email.group(1), password.group(1)


def run_bench(*args: str) -> str:
    """`python -m <bench> <args>` from the repo root; its stdout, after checking it succeeded."""
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class NodeProcess:
    def __init__(
        self,
        *,
        nats_url: str,
        data_dir: Path,
        partitions: int,
        name: str,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{name}.log"
        self._args = [
            sys.executable,
            "-m",
            "driftlock.cli",
            "node",
            "--nats-url",
            nats_url,
            "--data-dir",
            str(data_dir),
            "--partitions",
            str(partitions),
            "--metrics-port",
            "-1",
            "--node-id",
            name,
            *extra,
        ]
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while b'"node started"' not in self.log_path.read_bytes()[offset:]:
            if self._process.poll() is not None or loop.time() > deadline:
                raise AssertionError(f"node did not start:\n{self.log_path.read_text()}")
            await asyncio.sleep(0.05)

    def notable_log(self, limit: int = 80) -> str:
        """The node's warnings, errors and ownership or consumer changes, repeats folded,
        for a failure message: what a test that waited in vain needs to say why."""
        lines: list[str] = []
        last_kind: tuple[object, ...] = ()
        repeats = 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                lines.append(line)
                continue
            if record.get("level") == "info" and record.get("msg") not in NOTABLE:
                continue
            kind = (record.get("level"), record.get("msg"), record.get("error"))
            if kind == last_kind and record.get("level") != "info":
                lines[-1] = lines[-1].split(" (×")[0] + f" (×{repeats + 1})"
                repeats += 1
                continue
            last_kind, repeats = kind, 1
            record.pop("ts", None)
            lines.append(json.dumps(record)[:400])
        return f"--- {self.log_path.name}\n" + "\n".join(lines[-limit:])

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        return self._process.wait(timeout)

    def ensure_stopped(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
