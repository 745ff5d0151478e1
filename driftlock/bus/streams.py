"""Idempotent creation of the JetStream streams DriftLock needs: creates what is missing,
leaves what matches, and refuses with a precise message what is incompatible."""

import logging
from collections.abc import Callable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import RePublish, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from driftlock.bus.subjects import Subjects
from driftlock.errors import NatsSetupError

log = logging.getLogger("driftlock.bus")

Checker = Callable[[StreamConfig, StreamConfig], list[str]]


@dataclass(frozen=True, slots=True)
class StreamLimits:
    events_max_age_s: float
    anomalies_max_age_s: float
    duplicate_window_s: float


def events_description(partitions: int) -> str:
    return f"DriftLock events; partitions={partitions}"


def events_config(subjects: Subjects, partitions: int, limits: StreamLimits) -> StreamConfig:
    return StreamConfig(
        name=subjects.events_stream,
        description=events_description(partitions),
        subjects=[subjects.partitioned_all],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=limits.events_max_age_s,
        duplicate_window=min(120, limits.events_max_age_s),
    )


def anomalies_config(subjects: Subjects, limits: StreamLimits) -> StreamConfig:
    return StreamConfig(
        name=subjects.anomalies_stream,
        description="DriftLock anomalies, republished to subscribers once stored",
        subjects=[subjects.anomaly_store_all],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=limits.anomalies_max_age_s,
        # JetStream refuses a de-duplication window longer than the stream keeps messages.
        duplicate_window=min(limits.duplicate_window_s, limits.anomalies_max_age_s),
        republish=RePublish(src=subjects.anomaly_store_all, dest=subjects.anomaly_all),
    )


async def ensure_streams(
    js: JetStreamContext,
    subjects: Subjects,
    partitions: int,
    limits: StreamLimits,
    *,
    replicas: int = 1,
) -> None:
    """Replicas apply when a stream is created; an existing stream keeps its own (changing
    them is an operator's `nats stream edit`, not something a starting node should do)."""
    events = events_config(subjects, partitions, limits)
    anomalies = anomalies_config(subjects, limits)
    events.num_replicas = anomalies.num_replicas = replicas
    await _ensure(js, events, _events_conflicts)
    await _ensure(js, anomalies, _anomalies_conflicts)


async def _ensure(js: JetStreamContext, wanted: StreamConfig, conflicts: Checker) -> None:
    assert wanted.name is not None
    try:
        info = await js.stream_info(wanted.name)
    except NotFoundError:
        await js.add_stream(wanted)
        log.info("created stream", extra={"stream": wanted.name})
        return
    problems = conflicts(info.config, wanted)
    if problems:
        raise NatsSetupError(
            f"stream {wanted.name} exists with an incompatible config: "
            + "; ".join(problems)
            + ". Delete it or start DriftLock with matching settings."
        )


def _events_conflicts(have: StreamConfig, want: StreamConfig) -> list[str]:
    problems = []
    if sorted(have.subjects or []) != sorted(want.subjects or []):
        problems.append(f"subjects are {have.subjects}, need {want.subjects}")
    if have.description != want.description:
        problems.append(
            f"it was created for {have.description!r}, this node is set for "
            f"{want.description!r} (the partition count is fixed when the stream is created)"
        )
    return problems


def _anomalies_conflicts(have: StreamConfig, want: StreamConfig) -> list[str]:
    problems = []
    if sorted(have.subjects or []) != sorted(want.subjects or []):
        problems.append(f"subjects are {have.subjects}, need {want.subjects}")
    have_rp, want_rp = have.republish, want.republish
    assert want_rp is not None
    if have_rp is None or (have_rp.src, have_rp.dest) != (want_rp.src, want_rp.dest):
        problems.append(f"republish is {have_rp}, need {want_rp.src} -> {want_rp.dest}")
    return problems
