"""A node checks the NATS server it is given and refuses to start, with a clear message, when
the partition mapping is missing or different, or a stream has an incompatible config."""

import asyncio
import json
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from driftlock.actors.node import Node
from driftlock.bus.server import ManagedNatsServer, find_nats_server, version_warning
from driftlock.errors import ConfigError, NatsServerError, NatsSetupError
from driftlock.settings import Settings, load_settings
from tests.conftest import TEST_PARTITIONS


@pytest.fixture
async def plain_server(tmp_path: Path) -> AsyncIterator[str]:
    """A nats-server with JetStream but without DriftLock's mapping, as an operator might run
    one; yields its URL."""
    config = tmp_path / "plain.conf"
    config.write_text(f'listen: "127.0.0.1:-1"\njetstream {{ store_dir: "{tmp_path / "js"}" }}\n')
    ports = tmp_path / "ports"
    ports.mkdir()
    binary = find_nats_server()
    process = subprocess.Popen(
        [binary, "-c", str(config), "--ports_file_dir", str(ports)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ports_file = ports / f"{Path(binary).name}_{process.pid}.ports"
    try:
        for _ in range(500):
            if ports_file.exists() and ports_file.read_text().strip():
                break
            await asyncio.sleep(0.01)
        url: str = json.loads(ports_file.read_text())["nats"][0]
        nc = await nats.connect(url, max_reconnect_attempts=50, reconnect_time_wait=0.1)
        await nc.close()
        yield url
    finally:
        process.terminate()
        process.wait()


async def test_node_refuses_a_server_without_the_partition_mapping(
    plain_server: str, tmp_path: Path
) -> None:
    settings = load_settings(
        nats_url=plain_server, data_dir=tmp_path / "node", partitions=8, metrics_port=-1
    )
    node = Node(settings)
    with pytest.raises(NatsSetupError, match=r"does not map dl\.in") as caught:
        await node.start()
    await node.shutdown()
    assert "dl.p.{{partition(8,1,2)}}" in str(caught.value)

    # The CLI says the same and exits non-zero.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftlock.cli",
            "node",
            "--nats-url",
            plain_server,
            "--data-dir",
            str(tmp_path / "cli"),
            "--partitions",
            "8",
            "--metrics-port",
            "-1",
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "does not map dl.in.*.*" in result.stderr
    assert "driftlock nats-config" in result.stderr


async def test_node_refuses_a_different_partition_count(
    nats_server: ManagedNatsServer, tmp_path: Path
) -> None:
    settings = load_settings(
        nats_url=nats_server.url,
        data_dir=tmp_path / "node",
        partitions=TEST_PARTITIONS * 2,
        metrics_port=-1,
    )
    node = Node(settings)
    with pytest.raises(NatsSetupError, match="partitions ingest subjects differently") as caught:
        await node.start()
    await node.shutdown()
    assert "partition(16,1,2)" in str(caught.value)

    # Set for the server's count but facing a DL_EVENTS created for another count.
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(
        StreamConfig(
            name="DL_EVENTS", subjects=["dl.p.>"], description="DriftLock events; partitions=4"
        )
    )
    await nc.close()
    node = Node(settings.model_copy(update={"partitions": TEST_PARTITIONS}))
    with pytest.raises(NatsSetupError, match="partition count is fixed"):
        await node.start()
    await node.shutdown()


async def test_node_refuses_an_incompatible_existing_stream(
    nats_server: ManagedNatsServer, tmp_path: Path
) -> None:
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(StreamConfig(name="DL_ANOMALIES", subjects=["dl.x.anomaly.>"]))
    await nc.close()
    settings = load_settings(
        nats_url=nats_server.url,
        data_dir=tmp_path / "node",
        partitions=TEST_PARTITIONS,
        metrics_port=-1,
    )
    node = Node(settings)
    with pytest.raises(NatsSetupError, match="DL_ANOMALIES exists with an incompatible config"):
        await node.start()
    await node.shutdown()


def test_bad_settings_name_the_flag_and_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftlock.cli",
            "node",
            "--partitions",
            "0",
            "--nats-url",
            "http://x",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--partitions / DRIFTLOCK_PARTITIONS" in result.stderr
    assert "--nats-url / DRIFTLOCK_NATS_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_duplicate_window_shorter_than_a_replay_is_refused(tmp_path: Path) -> None:
    """A replay (from the last commit after a crash, from the last snapshot after a failover)
    republishes the anomalies since then: the duplicate window must outlast both."""
    flag = "--duplicate-window-s / DRIFTLOCK_DUPLICATE_WINDOW_S: "
    with pytest.raises(ConfigError, match=flag + r".*longer than --snapshot-interval-s \(30 s\)"):
        load_settings(data_dir=tmp_path, duplicate_window_s=10)
    with pytest.raises(ConfigError, match=flag + r".*longer than --commit-interval-s \(20 s\)"):
        load_settings(
            data_dir=tmp_path, duplicate_window_s=15, snapshot_interval_s=5, commit_interval_s=20
        )
    assert load_settings(data_dir=tmp_path, duplicate_window_s=31).duplicate_window_s == 31


def test_the_nats_server_is_the_operators_choice_then_the_projects_copy_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make setup` unpacks nats-server beside the venv's Python; a nats-server on PATH (often
    an older distribution package) must not shadow it, and $DRIFTLOCK_NATS_SERVER beats both."""
    venv_bin, path_dir = tmp_path / "venv" / "bin", tmp_path / "path"
    for directory in (venv_bin, path_dir):
        directory.mkdir(parents=True)
        (directory / "nats-server").write_text("#!/bin/sh\n")
        (directory / "nats-server").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(path_dir))
    monkeypatch.delenv("DRIFTLOCK_NATS_SERVER", raising=False)
    assert find_nats_server() == str(venv_bin / "nats-server")
    (venv_bin / "nats-server").unlink()
    assert find_nats_server() == str(path_dir / "nats-server")
    monkeypatch.setenv("DRIFTLOCK_NATS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(NatsServerError, match="is not an executable file"):
        find_nats_server()


async def test_the_node_says_which_nats_server_it_runs_on_and_warns_when_it_is_old(
    node_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    printed = subprocess.run(
        [find_nats_server(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    version = re.search(r"v(\d+\.\d+\.\d+)", printed)
    assert version, printed
    caplog.set_level(logging.INFO, logger="driftlock.node")
    node = Node(node_settings)
    await node.start()
    await node.shutdown()
    (started,) = [r for r in caplog.records if r.getMessage() == "node started"]
    assert getattr(started, "nats_server", None) == version.group(1)

    assert version_warning(2, 10) is None and version_warning(3, 0) is None
    warning = version_warning(2, 9)
    assert warning and "2.10" in warning and "100,000" in warning
