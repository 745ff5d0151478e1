"""StateStore on real LMDB files, and versioned records with their upgrade path."""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import numpy as np
import pytest

from driftlock.detect import Detector, DetectorState
from driftlock.detect.state import TABLES, new_state
from driftlock.state import ActorRecord, PartitionMeta, StateStore, records
from driftlock.state.records import decode_actor, decode_meta, encode
from driftlock.state.store import actor_key

MAP_SIZE = 1 << 26


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(store_dir: Path) -> Iterator[StateStore]:
    opened = StateStore(store_dir, map_size=MAP_SIZE)
    yield opened
    opened.close()


def record(points: int, *, seed: int = 0) -> ActorRecord:
    """A realistic record: detector state from a real run over `points` values."""
    values = np.random.default_rng(seed).normal(10.0, 1.0, max(points, 1))
    state, _ = Detector().detect(DetectorState(), values)
    return ActorRecord(
        detector=state,
        points=points,
        anomalies=seed,
        first_ts=1_732_550_400.0,
        last_ts=1_732_550_400.0 + points,
        last_value=float(values[-1]),
    )


def puts(partition: int, actors: dict[tuple[str, str], ActorRecord]) -> dict[bytes, bytes]:
    return {actor_key(partition, t, m): encode(r) for (t, m), r in actors.items()}


# -- reads and writes --


async def test_commit_then_read(store: StateStore) -> None:
    cpu, mem = record(300, seed=1), record(5, seed=2)
    await store.commit(3, puts(3, {("acme", "cpu"): cpu, ("acme", "mem:used"): mem}), 42)
    assert store.read_actor(3, "acme", "cpu") == cpu
    assert store.read_actor(3, "acme", "mem:used") == mem
    assert store.read_meta(3) == PartitionMeta(last_applied_seq=42)
    # The same ids in another partition are another key.
    assert store.read_actor(4, "acme", "cpu") is None
    assert store.read_actor(3, "acme", "disk") is None

    newer = record(301, seed=3)
    await store.commit(3, puts(3, {("acme", "cpu"): newer}), 43)
    assert store.read_actor(3, "acme", "cpu") == newer
    assert store.read_actor(3, "acme", "mem:used") == mem  # untouched
    assert store.read_meta(3).last_applied_seq == 43
    # Many at once, in the order asked, the missing ones as None.
    asked = [("acme", "disk"), ("acme", "mem:used"), ("acme", "cpu"), ("other", "cpu")]
    assert store.read_actors(3, asked) == [None, mem, newer, None]
    assert store.read_actors(3, []) == []


async def test_commit_without_actors_moves_the_sequence(store: StateStore) -> None:
    await store.commit(0, {}, 7)
    assert store.read_meta(0).last_applied_seq == 7
    assert list(store.iter_actors(0)) == []


def test_unknown_partition_meta(store: StateStore) -> None:
    meta = store.read_meta(17)
    assert meta == PartitionMeta()
    assert meta.last_applied_seq == 0
    assert meta.version == records.META_VERSION


async def test_iter_actors_only_the_partition_sorted_by_key(store: StateStore) -> None:
    ids = [("beta", "mem"), ("acme", "cpu:total"), ("acme-2", "x"), ("acme", "cpu"), ("a", "z")]
    by_partition = {
        p: {(t, m): record(i + 1, seed=p * 10 + i) for i, (t, m) in enumerate(ids)}
        for p in (0, 1, 10, 11)
    }
    for p in (11, 1, 10, 0):  # commit order must not matter
        await store.commit(p, puts(p, by_partition[p]), p + 100)

    for p, actors in by_partition.items():
        got = list(store.iter_actors(p))
        # Byte order of "<tenant>/<metric>": '-' (0x2d) sorts before '/' (0x2f).
        expected = sorted(actors, key=lambda tm: f"{tm[0]}/{tm[1]}".encode())
        assert [(t, m) for t, m, _ in got] == expected
        assert expected[:3] == [("a", "z"), ("acme-2", "x"), ("acme", "cpu")]
        assert all(r == actors[(t, m)] for t, m, r in got)
    assert list(store.iter_actors(2)) == []  # between used partitions
    assert list(store.iter_actors(12)) == []  # after the last key


async def test_many_concurrent_commits_are_grouped(store: StateStore) -> None:
    partitions, commits = 8, 200
    written = {i: record(i + 1, seed=i) for i in range(commits)}
    await asyncio.gather(
        *(
            store.commit(i % partitions, puts(i % partitions, {(f"t{i}", "m"): written[i]}), i + 1)
            for i in range(commits)
        )
    )
    stats = store.statistics()
    assert stats.commits == commits
    # All 200 are queued within one event-loop turn, so the writer merges them.
    assert 1 <= stats.transactions < stats.commits
    assert stats.actors == commits
    assert stats.size_bytes > 0
    for p in range(partitions):
        # Commits are queued in call order, so each partition ends at its last sequence.
        assert store.read_meta(p).last_applied_seq == max(
            i + 1 for i in range(commits) if i % partitions == p
        )
        got = {t: r for t, _, r in store.iter_actors(p)}
        assert got == {f"t{i}": written[i] for i in range(commits) if i % partitions == p}


async def test_failed_commit_raises_and_store_stays_usable(store: StateStore) -> None:
    with pytest.raises(lmdb.Error):
        await store.commit(1, {b"": b"x"}, 5)  # LMDB refuses an empty key
    assert store.read_meta(1).last_applied_seq == 0  # nothing of that commit landed
    await store.commit(1, puts(1, {("acme", "cpu"): record(3)}), 6)
    assert store.read_meta(1).last_applied_seq == 6
    assert store.statistics().actors == 1


async def test_reopen_keeps_everything(store_dir: Path) -> None:
    actors = {(f"tenant{i}", f"metric.{i}"): record(i + 10, seed=i) for i in range(20)}
    first = StateStore(store_dir, map_size=MAP_SIZE)
    try:
        await store_commit_all(first, actors)
    finally:
        first.close()

    reopened = StateStore(store_dir, map_size=MAP_SIZE)
    try:
        for p in (0, 1):
            assert reopened.read_meta(p).last_applied_seq == 1000 + p
            assert {(t, m): r for t, m, r in reopened.iter_actors(p)} == {
                k: r for i, (k, r) in enumerate(actors.items()) if i % 2 == p
            }
        assert reopened.statistics().actors == 20
        assert reopened.statistics().commits == 0  # counters are per process
    finally:
        reopened.close()


async def store_commit_all(store: StateStore, actors: dict[tuple[str, str], ActorRecord]) -> None:
    for p in (0, 1):
        mine = {k: r for i, (k, r) in enumerate(actors.items()) if i % 2 == p}
        await store.commit(p, puts(p, mine), 1000 + p)


# -- records and upgrades --


def test_current_records_round_trip() -> None:
    rec = record(200, seed=4)
    assert decode_actor(encode(rec)) == rec
    assert decode_actor(encode(ActorRecord())) == ActorRecord()
    meta = PartitionMeta(last_applied_seq=9)
    assert decode_meta(encode(meta)) == meta


def old_record(**fields: Any) -> bytes:
    return msgspec.msgpack.encode({"version": 1, **fields})


def test_old_version_is_upgraded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Version 1 (fake) called the point count `n`; version 2 renamed it to `points`."""

    def v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
        raw = dict(raw)
        raw["points"] = raw.pop("n")
        return raw

    monkeypatch.setattr(records, "ACTOR_VERSION", 2)
    monkeypatch.setitem(records.UPGRADES, 1, v1_to_v2)
    got = decode_actor(old_record(n=12, anomalies=2, last_value=3.5))
    assert got == ActorRecord(version=2, points=12, anomalies=2, last_value=3.5)


def test_old_version_with_an_incompatible_shape_is_upgraded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Version 1 (fake) kept a list of anomaly times where version 2 keeps a count: the old
    bytes do not decode as the current struct, and must still reach the upgrade."""

    def v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
        return {**raw, "anomalies": len(raw["anomalies"])}

    monkeypatch.setattr(records, "ACTOR_VERSION", 2)
    monkeypatch.setitem(records.UPGRADES, 1, v1_to_v2)
    got = decode_actor(old_record(points=40, anomalies=[1.0, 2.0, 3.0]))
    assert got == ActorRecord(version=2, points=40, anomalies=3)


def test_upgrades_chain_and_keep_the_detector_state(monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[int] = []

    def v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
        steps.append(1)
        return {**raw, "points": raw.pop("n")}

    def v2_to_v3(raw: dict[str, Any]) -> dict[str, Any]:
        steps.append(2)
        assert raw["version"] == 2
        return {**raw, "anomalies": raw["points"] // 10}

    monkeypatch.setattr(records, "ACTOR_VERSION", 3)
    monkeypatch.setitem(records.UPGRADES, 1, v1_to_v2)
    monkeypatch.setitem(records.UPGRADES, 2, v2_to_v3)
    detector = record(150).detector
    data = old_record(n=150, detector=msgspec.to_builtins(detector))
    got = decode_actor(data)
    assert steps == [1, 2]
    assert got == ActorRecord(version=3, points=150, anomalies=15, detector=detector)


async def test_store_reads_upgrade_old_records(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.commit(0, {actor_key(0, "acme", "cpu"): old_record(n=5)}, 1)
    monkeypatch.setattr(records, "ACTOR_VERSION", 2)
    monkeypatch.setitem(records.UPGRADES, 1, lambda raw: {**raw, "points": raw["n"]})
    assert store.read_actor(0, "acme", "cpu") == ActorRecord(version=2, points=5)
    assert [r for _, _, r in store.iter_actors(0)] == [ActorRecord(version=2, points=5)]


@pytest.mark.parametrize(
    "fields",
    [{"points": 1}, {"points": [1, 2], "detector": "v2-format"}],
    ids=["compatible-shape", "incompatible-shape"],
)
def test_newer_version_is_refused(fields: dict[str, Any]) -> None:
    now = records.ACTOR_VERSION
    data = msgspec.msgpack.encode({**fields, "version": now + 1})
    newer = rf"record version {now + 1} is newer than this DriftLock \({now}\)"
    with pytest.raises(ValueError, match=newer):
        decode_actor(data)


def test_a_missing_upgrade_step_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    now = records.ACTOR_VERSION
    old = msgspec.msgpack.encode({"version": now, "points": 3})
    monkeypatch.setattr(records, "ACTOR_VERSION", now + 1)
    with pytest.raises(ValueError, match=f"no upgrade from record version {now} to {now + 1}"):
        records.decode_actor(old)


def test_a_version_1_record_with_a_table_per_field_reads_as_the_same_state() -> None:
    """Version 1 kept each of the detector's tables as a field of its own; version 2 keeps
    them in one buffer. A record the last release wrote reads as the state it held."""
    current = record(150)
    detector = msgspec.to_builtins(current.detector, builtin_types=(bytes,))
    tables = dict(zip(TABLES, current.detector.each_table(), strict=True))
    del detector["tables"], detector["ends"]
    v1 = {**msgspec.to_builtins(current, builtin_types=(bytes,)), "version": 1}
    v1["detector"] = {**detector, **tables}
    assert tables["values"] and tables["hist"] and tables["season_lo"] == b""  # no timestamps
    got = decode_actor(msgspec.msgpack.encode(v1))
    assert got == current
    assert got.detector.hist == tables["hist"] and got.detector.values == tables["values"]
    empty = decode_actor(msgspec.msgpack.encode({"version": 1, "points": 3}))
    assert empty == ActorRecord(points=3)


def _mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mapping of `path`."""
    resident, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and not line.startswith(("Rss", "Size")):
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            resident += int(line.split()[1])
    return resident


async def test_pages_read_through_the_map_are_given_back(store_dir: Path) -> None:
    """An export reads every page of a partition; afterwards none stays resident."""
    store = StateStore(store_dir, sync=False)
    try:
        big = encode(ActorRecord(detector=new_state(values=b"\x01" * 65536)))
        await store.commit(3, {actor_key(3, "t", f"m{i}"): big for i in range(64)}, 1)
        data = (store_dir / "data.mdb").resolve()
        for i in range(64):
            assert store.read_actor(3, "t", f"m{i}") is not None
        assert _mapped_kib(data) >= 64 * 64  # every value was read through the map
        assert store.release_mapped_pages() > 0
        assert _mapped_kib(data) < 64
        assert len(store.export_partition(3)[1]) == 64
        assert _mapped_kib(data) < 64
        assert store.read_actor(3, "t", "m0") is not None  # still readable: faulted back in
    finally:
        store.close()
