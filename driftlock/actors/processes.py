"""A node of several processes: `driftlock node --processes N`.

One Python process uses about one core, however many the machine has: the GIL lets only the
compiled detector calls run beside the event loop. Measured under a paced load of 160,000
events/s, a node's detection threads spent two thirds of their time waiting for it (0.5 s of
CPU in 1.6 s of wall time per second), the node used 0.8 of 2 cores, and anomalies waited
hundreds of milliseconds. So a node meant to use a machine's cores runs N processes, each a
cluster member that the cluster gives its share of the partitions like any other node, with
nothing shared but NATS:

- process k is member `<node-id>-<k>`, keeps its state in `<data-dir>/process-<k>` and serves
  its metrics on `<metrics-port> + k` (each a free port of its own with 0);
- `--max-active-actors` and `--detect-threads` are the node's, split among its processes;
- a process that exits on its own is started again, under the same id, so it takes its
  partitions back at once (after RESTART_DELAY_S, doubling up to MAX_RESTART_DELAY_S while it
  keeps failing). One that exits with an error within START_GRACE_S of the node's start
  stops the node: that is a setting or a connection at fault, and starting it again would
  bury the message (a process killed by a signal is started again);
- SIGTERM or SIGINT stop every process gracefully (each hands its partitions off), and the node
  exits once they all have. A process whose node dies without that gets SIGTERM from the
  kernel (Linux), so no orphan keeps leases its node no longer speaks for.
"""

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys

from driftlock.errors import ConfigError, DriftLockError
from driftlock.settings import Settings, load_settings

log = logging.getLogger("driftlock.node")

START_GRACE_S = 10.0
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
PARENT_ENV = "_DRIFTLOCK_NODE_PARENT"
"""Set in a process's environment to its node's pid (no DRIFTLOCK_ prefix: not a setting)."""
_PR_SET_PDEATHSIG = 1


class NodeProcessFailed(DriftLockError):
    """A node's process failed as the node started."""

    code = "node_process_failed"


def process_count(settings: Settings) -> int:
    return settings.processes or os.cpu_count() or 1


def plan(settings: Settings) -> list[Settings]:
    """The settings of each of the node's processes, or a ConfigError before any starts."""
    count = process_count(settings)
    last_id = f"{settings.node_id}-{count - 1}"
    if len(last_id) > 64:
        raise ConfigError(
            f"--node-id {settings.node_id!r}: with --processes {count} the processes' ids "
            f"(up to {last_id!r}) exceed 64 characters"
        )
    if settings.metrics_port > 0 and settings.metrics_port + count - 1 > 65535:
        raise ConfigError(
            f"--metrics-port {settings.metrics_port}: process {count - 1} would serve on "
            f"{settings.metrics_port + count - 1}, beyond 65535"
        )
    cores = os.cpu_count() or 1
    own = {
        "node_id",
        "data_dir",
        "metrics_port",
        "processes",
        "max_active_actors",
        "detect_threads",
    }
    shared = settings.model_dump(exclude=own)
    port = settings.metrics_port
    return [
        load_settings(
            **shared,
            node_id=f"{settings.node_id}-{k}",
            data_dir=settings.data_dir / f"process-{k}",
            metrics_port=port + k if port > 0 else port,
            processes=1,
            max_active_actors=max(1, settings.max_active_actors // count),
            detect_threads=max(1, (settings.detect_threads or cores) // count),
        )
        for k in range(count)
    ]


async def run_node_processes(settings: Settings, stop: asyncio.Event) -> None:
    """Run the node's processes until `stop` is set, then stop them all and return."""
    processes = plan(settings)
    log.info(
        "node processes starting",
        extra={"node_id": settings.node_id, "processes": len(processes)},
    )
    tasks = [asyncio.create_task(_keep_running(k, p, stop)) for k, p in enumerate(processes)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        stop.set()  # after a failure too: the others stop gracefully before it is reported
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if (failure := task.exception()) is not None:
            raise failure


async def _keep_running(index: int, settings: Settings, stop: asyncio.Event) -> None:
    node_id = settings.node_id
    delay, first = RESTART_DELAY_S, True
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        code = await _run_once(settings, stop)
        if stop.is_set():
            return
        ran = loop.time() - started
        if first and code > 0 and ran < START_GRACE_S:
            raise NodeProcessFailed(
                f"node process {index} ({node_id}) exited with {code} "
                f"{ran:.1f} s after it started; its log above says why"
            )
        first = False
        if ran > MAX_RESTART_DELAY_S:
            delay = RESTART_DELAY_S  # it ran fine for a while: not a crash loop
        log.error(
            "node process exited; starting it again",
            extra={"node_id": node_id, "exit_code": code, "restart_in_s": delay},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(2 * delay, MAX_RESTART_DELAY_S)


async def _run_once(settings: Settings, stop: asyncio.Event) -> int:
    """One run of a node process; on `stop`, SIGTERM and wait for as long as its handoff
    takes (an operator's own supervisor bounds that with its kill timeout)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "driftlock.cli", "node", env=_environment(settings)
    )
    exited = asyncio.ensure_future(child.wait())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        return await asyncio.shield(exited)
    finally:
        stopping.cancel()


def _environment(settings: Settings) -> dict[str, str]:
    """The process's settings as DRIFTLOCK_* variables: the node's, resolved from its flags
    and environment, so the process needs no flags (and shows no NATS credentials in `ps`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOCK_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            env[f"DRIFTLOCK_{name.upper()}"] = text
    env[PARENT_ENV] = str(os.getpid())
    return env


def follow_parent() -> None:
    """In a node's process: exit when the node does, however it ends."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None:
        return
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # it died before prctl: nobody would signal us
        sys.exit(1)
