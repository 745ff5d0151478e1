"""The node's budget of actors in memory: least recently used leave first, idle ones leave
after the passivation delay, a worker only ever sees its own actors, and a big sweep hands the
freed memory back (an injected clock and trim, no sleeping); a pulled batch commits in pieces
of few streams, since a piece's actors stay in memory until it commits."""

from driftlock.actors.actor import StreamActor
from driftlock.actors.partition import _pieces
from driftlock.actors.residency import TRIM_AFTER_ACTORS, ActiveActors, release_free_memory
from driftlock.bus.feed import Delivery


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_least_recently_used_actor_leaves_beyond_the_limit() -> None:
    actors = ActiveActors(max_active=2, idle_s=60, clock=Clock())
    owner = actors.owner()
    for m in ("a", "b"):
        actors.add(owner, StreamActor("t", m, None), restored_in=None)
    assert actors.get(owner, "t", "a") is not None  # a is now more recent than b
    actors.add(owner, StreamActor("t", "c", None), restored_in=0.001)
    assert actors.get(owner, "t", "b") is None
    assert actors.get(owner, "t", "a") is not None and actors.get(owner, "t", "c") is not None
    stats = actors.statistics()
    assert (stats.active, stats.created, stats.restored, stats.evicted_limit) == (2, 2, 1, 1)
    assert actors.active(owner) == 2


def test_idle_actors_leave_after_the_delay_whichever_worker_holds_them() -> None:
    clock = Clock()
    actors = ActiveActors(max_active=100, idle_s=10, clock=clock)
    first, second = actors.owner(), actors.owner()
    actors.add(first, StreamActor("t", "old", None), restored_in=None)
    clock.now += 8
    actors.add(second, StreamActor("t", "new", None), restored_in=None)
    assert actors.passivate_idle() == 0  # swept at most once a second
    clock.now += 3
    assert actors.passivate_idle() == 1
    assert actors.get(first, "t", "old") is None and actors.active(first) == 0
    clock.now += 0.5
    assert actors.passivate_idle() == 0
    clock.now += 10
    assert actors.passivate_idle() == 1
    assert len(actors) == 0 and actors.statistics().evicted_idle == 2


def test_a_worker_never_sees_another_instances_actors() -> None:
    actors = ActiveActors(max_active=100, idle_s=60, clock=Clock())
    failed, replacement = actors.owner(), actors.owner()
    actors.add(failed, StreamActor("t", "m", None), restored_in=None)
    assert actors.get(replacement, "t", "m") is None
    actors.add(replacement, StreamActor("t", "m", None), restored_in=0.001)
    assert actors.drop(failed) == 1
    assert actors.get(replacement, "t", "m") is not None and len(actors) == 1


def test_a_big_sweep_trims_the_heap_once() -> None:
    clock = Clock()
    trims: list[int] = []
    actors = ActiveActors(
        max_active=10 * TRIM_AFTER_ACTORS,
        idle_s=1,
        clock=clock,
        release=lambda: trims.append(len(actors)),
    )
    owner = actors.owner()
    for i in range(TRIM_AFTER_ACTORS + 5):
        actors.add(owner, StreamActor("t", f"m{i}", None), restored_in=None)
    clock.now += 2
    assert actors.passivate_idle() == TRIM_AFTER_ACTORS + 5
    assert trims == [0] and actors.statistics().trims == 1
    release_free_memory()  # the real one runs (a no-op where there is no glibc)


def test_a_pulled_batch_is_committed_in_pieces_of_few_streams() -> None:
    def d(seq: int, stream: str) -> Delivery:
        return Delivery(f"dl.p.0.t.{stream}", b"1", None, seq, 0.0, 0)

    batch = [d(1, "a"), d(2, "b"), d(3, "a"), d(4, "c"), d(5, "c"), d(6, "d"), d(7, "a")]
    pieces = list(_pieces(batch, 2))
    assert [[x.seq for x in p] for p in pieces] == [[1, 2, 3], [4, 5, 6], [7]]
    assert list(_pieces(batch, 10)) == [batch] and list(_pieces([], 1)) == []
