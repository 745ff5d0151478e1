"""One typed settings object for every process, read from `DRIFTLOCK_*` environment variables
and overridden by command-line flags; validated once at start."""

import os
import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from driftlock.detect import DetectorConfig
from driftlock.errors import ConfigError

NODE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""Node ids are KV keys and log labels."""


def _default_node_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40]
    return f"{host}-{os.getpid()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLOCK_", extra="forbid", frozen=True)

    data_dir: Path = Field(
        Path(".driftlock"), description="directory for LMDB state and the managed nats-server"
    )
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server URL (`driftlock node`)")
    nats_host: str = Field(
        "127.0.0.1", description="address the managed nats-server listens on (`driftlock up`)"
    )
    nats_port: int = Field(
        4222, ge=-1, le=65535, description="port of the managed nats-server; -1 picks a free one"
    )
    prefix: str = Field("dl", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="subject prefix")
    partitions: int = Field(
        64, ge=1, le=4096, description="partition count, fixed when DL_EVENTS is created"
    )
    node_id: str = Field(
        default_factory=_default_node_id,
        pattern=NODE_ID_PATTERN,
        description="this node's id, unique in the cluster; a restart with the same id takes "
        "its partitions back at once (default: host-pid)",
    )
    node_weight: float = Field(
        1.0, ge=0, le=1000, description="share of partitions relative to other nodes; 0 owns none"
    )
    member_ttl_s: float = Field(
        5.0, ge=0.5, le=300, description="a node silent this long leaves the member list"
    )
    lease_ttl_s: float = Field(
        5.0, ge=0.5, le=300, description="a partition lease not renewed this long expires"
    )
    snapshot_interval_s: float = Field(
        30.0,
        gt=0,
        description="seconds between periodic partition snapshots (more when a round takes "
        "long: rounds keep to a quarter of the time)",
    )
    max_concurrent_moves: int = Field(
        4, ge=1, le=1024, description="partitions a node hands off or takes at the same time"
    )
    cluster: int = Field(
        1,
        ge=1,
        le=7,
        description="`up` only: nats-servers in the managed cluster on loopback (client "
        "ports from --nats-port on); 3 or more also gives streams and buckets 3 replicas",
    )
    replicas: int = Field(
        1, ge=1, le=5, description="replicas of streams, buckets and snapshots (3 on a cluster)"
    )
    metrics_host: str = Field("127.0.0.1", description="address of the Prometheus endpoint")
    metrics_port: int = Field(
        9321, ge=-1, le=65535, description="Prometheus port; 0 picks a free one, -1 disables"
    )
    pull_batch: int = Field(2000, ge=1, le=100_000, description="messages per pull request")
    commit_interval_s: float = Field(
        0.5,
        ge=0,
        le=60,
        description="longest a partition's applied changes wait to be committed to LMDB: "
        "a stream in several batches meanwhile is written once; a crash replays at most "
        "this much (0: a commit per batch)",
    )
    processes: int = Field(
        1,
        ge=0,
        le=256,
        description="processes the node runs, each a cluster member with its share of the "
        "partitions (0: one per CPU core); one process uses about one core",
    )
    detect_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="threads the partitions' detectors score batches on (with 1, a small"
        " batch is scored on the event loop instead); 0: one per CPU core",
    )
    max_points_per_message: int = Field(10_000, ge=1, description="larger batches are rejected")
    passivate_after_s: float = Field(
        300.0, gt=0, description="idle seconds before an actor leaves memory"
    )
    max_active_actors: int = Field(
        50_000,
        ge=1,
        description="stream actors a node keeps in memory (about 25 kB each with a full "
        "detector state); beyond it the least recently used leave for LMDB",
    )
    lmdb_map_size: int = Field(1 << 36, ge=1 << 20, description="LMDB map size in bytes (virtual)")
    lmdb_sync: bool = Field(True, description="fsync LMDB data pages on commit")
    events_max_age_s: float = Field(7 * 86400, gt=0, description="how long DL_EVENTS keeps events")
    anomalies_max_age_s: float = Field(
        30 * 86400, gt=0, description="how long DL_ANOMALIES keeps anomalies"
    )
    duplicate_window_s: float = Field(
        3600,
        gt=0,
        description="DL_ANOMALIES de-duplication window; longer than --snapshot-interval-s "
        "and --commit-interval-s, so that replays republish no anomaly twice",
    )
    detector_window: int = Field(
        256, ge=8, le=100_000, description="points in the rolling baselines"
    )
    detector_warmup: int = Field(64, ge=2, description="points before a stream is scored")
    detector_threshold: float = Field(0.5, gt=0, lt=1, description="anomaly score threshold")
    gateway_host: str = Field("127.0.0.1", description="address the HTTP gateway listens on")
    gateway_port: int = Field(
        8321, ge=0, le=65535, description="HTTP gateway port; 0 picks a free one"
    )
    access_token_ttl_s: float = Field(900, gt=0, description="lifetime of JWT access tokens")
    refresh_token_ttl_s: float = Field(30 * 86400, gt=0, description="lifetime of refresh tokens")
    max_body_bytes: int = Field(
        8 << 20, ge=1024, description="largest HTTP request body (413 above)"
    )
    alert_tick_s: float = Field(
        1.0, gt=0, le=60, description="seconds between alerter passes over open incidents"
    )
    alert_fetch_batch: int = Field(
        256, ge=1, le=10_000, description="anomalies per alerter pull from DL_ANOMALIES"
    )
    alert_send_attempts: int = Field(
        5, ge=1, le=20, description="tries per notification before it is dead-lettered"
    )
    alert_backoff_s: float = Field(
        1.0, gt=0, le=600, description="delay before the first retry; doubles per retry"
    )
    alert_send_timeout_s: float = Field(
        10.0, gt=0, le=300, description="timeout of one SMTP or HTTP delivery attempt"
    )
    alert_link_base_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="public gateway URL used in notification links (default: the gateway's "
        "host and port)",
    )
    alert_metrics_port: int = Field(
        9322,
        ge=-1,
        le=65535,
        description="Prometheus port of `driftlock alerter`; 0 picks a free one, -1 disables",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, value: str) -> str:
        if not value.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ValueError("must start with nats://, tls://, ws:// or wss://")
        return value

    @field_validator("duplicate_window_s")
    @classmethod
    def _covers_replays(cls, value: float, info: ValidationInfo) -> float:
        """A worker that crashes replays from its last commit, a partition that fails over from
        its last snapshot: the anomalies republished then are dropped only within this window."""
        replays = {
            "--commit-interval-s": info.data.get("commit_interval_s"),
            "--snapshot-interval-s": info.data.get("snapshot_interval_s"),
        }
        for flag, interval in replays.items():
            if interval is not None and value <= interval:
                raise ValueError(
                    f"must be longer than {flag} ({interval:g} s): a replay republishes the "
                    "anomalies since then, and only this window drops the copies"
                )
        return value

    @property
    def detector(self) -> DetectorConfig:
        return DetectorConfig(
            window=self.detector_window,
            warmup=self.detector_warmup,
            threshold=self.detector_threshold,
        )


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment plus explicit overrides, or a ConfigError naming every
    bad field and where it came from."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            source = f"--{field.replace('_', '-')} / DRIFTLOCK_{field.upper()}"
            lines.append(f"{source}: {error['msg']} (got {error.get('input')!r})")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from None
