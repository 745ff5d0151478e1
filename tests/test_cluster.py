"""The cluster's parts against a real nats-server: rendezvous assignment, compare-and-set
leases, partition export/restore and snapshots in the Object Store."""

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from nats.aio.client import Client

from driftlock.bus.buckets import key_value
from driftlock.cluster.coordinator import DutyCycle
from driftlock.cluster.leases import Leases, LeaseState
from driftlock.cluster.rendezvous import assignment
from driftlock.cluster.snapshots import Snapshots, delta_name
from driftlock.state import StateStore
from driftlock.state.store import actor_key
from tests.conftest import eventually


def test_rendezvous_spreads_partitions_evenly() -> None:
    owners = Counter(assignment({"a": 1, "b": 1, "c": 1}, 64))
    assert set(owners) == {"a", "b", "c"}
    assert all(12 <= n <= 32 for n in owners.values()), owners


def test_a_join_moves_only_partitions_to_the_new_member() -> None:
    before = assignment({"a": 1, "b": 1, "c": 1}, 256)
    after = assignment({"a": 1, "b": 1, "c": 1, "d": 1}, 256)
    moved = [p for p in range(256) if before[p] != after[p]]
    assert moved and all(after[p] == "d" for p in moved)
    assert 40 <= len(moved) <= 90  # about a quarter


def test_a_leave_moves_only_the_leavers_partitions() -> None:
    before = assignment({"a": 1, "b": 1, "c": 1}, 256)
    after = assignment({"a": 1, "c": 1}, 256)
    moved = [p for p in range(256) if before[p] != after[p]]
    assert moved and all(before[p] == "b" for p in moved)
    assert "b" not in after


def test_weights_set_the_share_and_zero_owns_nothing() -> None:
    owners = Counter(assignment({"big": 3, "small": 1, "drained": 0}, 4096))
    assert "drained" not in owners
    assert 2.5 < owners["big"] / owners["small"] < 3.5
    assert assignment({"drained": 0}, 4) == [None] * 4


async def lease_table(nc: Client, node: str, ttl: float) -> Leases:
    kv = await key_value(nc.jetstream(), "test_leases", replicas=1)
    leases = Leases(kv, node_id=node, instance=uuid.uuid4().hex, ttl_s=ttl)
    await leases.cache.start()
    return leases


async def test_a_lease_has_one_holder_and_expires_when_not_renewed(nc: Client) -> None:
    a = await lease_table(nc, "a", ttl=1.0)
    b = await lease_table(nc, "b", ttl=1.0)
    try:
        assert b.state(0) is LeaseState.FREE
        assert await a.acquire(0) is not None
        assert a.valid(0)
        await eventually(lambda: b.state(0) is LeaseState.TAKEN)
        stale = b.cache.seen("p.0")
        await a.renew(a.cache.kv)
        assert a.take_lost() == []
        await eventually(lambda: b.cache.seen("p.0") != stale)
        fresh = b.cache.seen("p.0")
        assert stale is not None and fresh is not None
        # A view from before the renewal loses the compare-and-set.
        b.cache._seen["p.0"] = stale
        assert await b.acquire(0) is None
        b.cache._seen["p.0"] = fresh
        # a stops renewing: its lease lapses on its own clock first, then b may take it.
        await eventually(lambda: not a.valid(0), timeout=3)
        await eventually(lambda: b.state(0) is LeaseState.EXPIRED, timeout=3)
        previous = await b.acquire(0)
        assert previous is not None and previous.node == "a"
        await a.renew(a.cache.kv)
        assert a.take_lost() == [0]  # a learns it lost the lease
        assert not a.valid(0) and b.valid(0)
    finally:
        await a.cache.stop()
        await b.cache.stop()


async def test_a_released_lease_is_free_at_once_and_says_what_to_restore(nc: Client) -> None:
    a = await lease_table(nc, "a", ttl=30.0)
    b = await lease_table(nc, "b", ttl=30.0)
    try:
        assert await a.acquire(3) is not None
        await eventually(lambda: b.state(3) is LeaseState.TAKEN)
        await a.release(3, stop_requested_at=123.0, snapshot_seq=77)
        await eventually(lambda: b.state(3) is LeaseState.FREE)
        previous = await b.acquire(3)
        assert previous is not None
        assert (previous.node, previous.stop_requested_at, previous.snapshot_seq) == ("", 123.0, 77)
    finally:
        await a.cache.stop()
        await b.cache.stop()


async def test_a_restarted_node_takes_its_own_leases_back_at_once(nc: Client) -> None:
    old = await lease_table(nc, "n1", ttl=30.0)
    assert await old.acquire(5) is not None
    await old.cache.stop()  # the process dies without releasing
    new = await lease_table(nc, "n1", ttl=30.0)
    try:
        assert new.state(5) is LeaseState.OURS
        assert await new.acquire(5) is not None
    finally:
        await new.cache.stop()


async def test_replace_partition_swaps_exactly_one_partition(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    try:
        await store.commit(1, {actor_key(1, "t", "a"): b"A", actor_key(1, "t", "b"): b"B"}, 10)
        await store.commit(2, {actor_key(2, "t", "c"): b"C"}, 20)
        assert store.export_partition(1) == (10, [(b"t/a", b"A"), (b"t/b", b"B")])
        await store.replace_partition(1, [(b"t/z", b"Z")], 15)
        assert store.export_partition(1) == (15, [(b"t/z", b"Z")])
        assert store.export_partition(2) == (20, [(b"t/c", b"C")])
    finally:
        store.close()


async def test_a_snapshot_restores_only_when_it_is_newer(nc: Client, tmp_path: Path) -> None:
    snapshots = Snapshots(nc.jetstream(), "test_snapshots")
    await snapshots.open()
    source, target = StateStore(tmp_path / "source"), StateStore(tmp_path / "target")
    try:
        records = {actor_key(4, "t", f"m{i}"): bytes([i]) * 3000 for i in range(200)}
        await source.commit(4, records, 500)
        info = await snapshots.upload(source, 4)
        assert info.last_applied_seq == 500
        found = await snapshots.info(4)
        assert found is not None and found.last_applied_seq == 500

        await target.commit(4, {actor_key(4, "t", "stale"): b"old"}, 100)
        assert await snapshots.restore_if_newer(target, 4) == 500
        assert target.export_partition(4) == source.export_partition(4)

        await target.commit(4, {}, 900)  # the local copy moved past the snapshot
        assert await snapshots.restore_if_newer(target, 4) is None
        assert target.read_meta(4).last_applied_seq == 900
        assert await snapshots.info(9) is None
    finally:
        source.close()
        target.close()
        await asyncio.sleep(0)


async def test_after_the_base_a_snapshot_carries_only_the_changed_actors(
    nc: Client, tmp_path: Path
) -> None:
    snapshots = Snapshots(nc.jetstream(), "test_snapshots")
    await snapshots.open()
    source = StateStore(tmp_path / "source")
    targets = [StateStore(tmp_path / f"target{i}") for i in range(3)]
    try:
        await source.commit(4, {key(i): bytes([i]) * 3000 for i in range(200)}, 500)
        base = await snapshots.upload(source, 4)
        at_base = source.export_partition(4)
        await source.commit(4, {key(3): b"changed" * 400, key(500): b"new" * 1000}, 510)
        first = await snapshots.upload(source, 4)
        await source.commit(4, {key(7): b"again" * 500}, 520)
        second = await snapshots.upload(source, 4)
        assert (first.last_applied_seq, second.last_applied_seq) == (510, 520)
        assert first.size * 20 < base.size and second.size * 20 < base.size
        found = await snapshots.info(4)
        assert found is not None and found.last_applied_seq == 520

        # base + both deltas: exactly the source, at its sequence
        assert await snapshots.restore_if_newer(targets[0], 4) == 520
        assert targets[0].export_partition(4) == source.export_partition(4)

        # a lost delta ends the chain before it: the base alone, replay does the rest
        await snapshots.store.delete(delta_name(4, 1))
        found = await snapshots.info(4)
        assert found is not None and found.last_applied_seq == 500
        assert await snapshots.restore_if_newer(targets[1], 4) == 500
        assert targets[1].export_partition(4) == at_base

        # the next owner starts a base of its own; the old chain's delta 2 is ignored
        other = Snapshots(nc.jetstream(), "test_snapshots")
        await other.open()
        await targets[0].commit(4, {key(9): b"x"}, 530)
        assert (await other.upload(targets[0], 4)).size > base.size / 2
        assert await snapshots.restore_if_newer(targets[2], 4) == 530
        assert targets[2].export_partition(4) == targets[0].export_partition(4)
    finally:
        for store in (source, *targets):
            store.close()
        await asyncio.sleep(0)


def key(i: int) -> bytes:
    return actor_key(4, "t", f"m{i}")


async def test_changes_since_an_export_match_the_sequence_read_with_them(
    tmp_path: Path,
) -> None:
    """Exports run in a thread while commits keep landing: base + the deltas so far must be
    the partition exactly at the last delta's sequence, never a change short of it."""

    def changes(n: int) -> dict[bytes, bytes]:
        return {key(n % 37): b"%d" % n, key(n % 11 + 100): b"%d" % n}

    def expected_at(seq: int) -> dict[bytes, bytes]:
        state: dict[bytes, bytes] = {}
        for n in range(1, seq + 1):
            state.update({k.split(b"/", 1)[1]: v for k, v in changes(n).items()})
        return state

    for attempt in range(10):  # the interleavings differ from run to run
        await check_changes_against_commits(tmp_path / f"state{attempt}", changes, expected_at)


async def check_changes_against_commits(
    path: Path,
    changes: Callable[[int], dict[bytes, bytes]],
    expected_at: Callable[[int], dict[bytes, bytes]],
) -> None:
    store = StateStore(path)
    try:
        assert store.export_changes(4) is None  # nothing tracked yet
        seq, records = store.export_partition(4)
        rebuilt = dict(records)
        pending = []
        for n in range(1, 301):
            pending.append(store.submit(4, changes(n), n))
            if n % 10 == 0:
                exported = await asyncio.to_thread(store.export_changes, 4)
                assert exported is not None
                seq, delta = exported
                rebuilt.update(delta)
                assert rebuilt == expected_at(seq)
            if n % 50 == 0:  # a new base: the deltas after it follow on from it
                seq, full = await asyncio.to_thread(store.export_partition, 4)
                rebuilt = dict(full)
                assert rebuilt == expected_at(seq)
        await asyncio.gather(*pending)
        exported = store.export_changes(4)
        assert exported is not None
        rebuilt.update(exported[1])
        assert exported[0] == 300 and rebuilt == expected_at(300)

        await store.replace_partition(4, [(b"t/z", b"Z")], 400)
        assert store.export_changes(4) is None  # a restore: changes unknown again
    finally:
        store.close()


def test_periodic_snapshots_keep_to_their_share_of_the_time() -> None:
    now = [100.0]
    duty = DutyCycle(0.25, clock=lambda: now[0])
    assert duty.ready()
    started = now[0]
    now[0] += 20.0  # a round of big partitions took 20 s
    duty.ran(started)
    now[0] += 59.0
    assert not duty.ready()  # three times the round: 60 s of processing first
    now[0] += 1.0
    assert duty.ready()
    started = now[0]
    now[0] += 0.1  # small partitions: the usual interval decides again
    duty.ran(started)
    now[0] += 0.31
    assert duty.ready()
