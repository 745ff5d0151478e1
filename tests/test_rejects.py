"""Bad input never stops anything: each kind is rejected with a reason on dl.rejected.<tenant>
and counted by reason, while the good events around it are applied."""

import asyncio
import json
from collections import Counter

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from driftlock.actors import partition
from driftlock.actors.node import Node
from driftlock.bus.partition import partition_of
from tests.conftest import TEST_PARTITIONS, eventually, scrape

T0 = 1_732_550_400.0
MSGPACK = {"Content-Type": "application/msgpack"}

BAD: list[tuple[str, bytes, dict[str, str] | None, str]] = [
    ("dl.in.acme.cpu", b"\xff\x00garbage", None, "malformed_payload"),
    ("dl.in.acme.cpu", b'{"temperature": 1}', None, "invalid_shape"),
    ("dl.in.acme.cpu", b'"just a string"', None, "invalid_shape"),
    ("dl.in.acme.cpu", msgspec.msgpack.encode([T0, float("nan")]), MSGPACK, "non_finite"),
    ("dl.in.acme.cpu", msgspec.msgpack.encode([T0, float("inf")]), MSGPACK, "non_finite"),
    ("dl.in.acme.cpu", b'{"ts": 1732550400, "value": "high"}', None, "not_a_number"),
    ("dl.in.acme.cpu", b'{"ts": "yesterday", "value": 1}', None, "invalid_timestamp"),
    ("dl.in.acme.cpu", b'{"ts": 12, "value": 1}', None, "timestamp_out_of_range"),
    ("dl.in.acme.cpu", b'{"ts": 1732550400000, "value": 1}', None, "timestamp_out_of_range"),
    ("dl.in.acme.cpu", b"1", {"Content-Type": "text/csv"}, "unsupported_content_type"),
    ("dl.in." + "t" * 65 + ".cpu", b"1", None, "invalid_tenant"),
    ("dl.in.acme.cpu!load", b"1", None, "invalid_metric"),
    ("dl.in.acme", b"1", None, "invalid_subject"),
    ("dl.in.acme.cpu.extra", b"1", None, "invalid_subject"),
    (
        "dl.in.acme.cpu",
        json.dumps([[T0 + i, 1.0] for i in range(10_001)]).encode(),
        None,
        "batch_too_large",
    ),
]


def good_points(node: Node, metric: str) -> int:
    rec = node.store.read_actor(partition_of("acme", metric, TEST_PARTITIONS), "acme", metric)
    return rec.points if rec else 0


async def test_each_kind_of_bad_input_is_rejected_and_good_input_survives(
    node: Node, nc: Client
) -> None:
    rejects: list[dict[str, object]] = []

    async def on_reject(msg: Msg) -> None:
        rejects.append(json.loads(msg.data))

    await nc.subscribe("dl.rejected.>", cb=on_reject)
    sent_good = 0
    for i, (subject, payload, headers, _) in enumerate(BAD):
        # Good points on the same stream (same partition, same batch) around every bad one.
        await nc.publish("dl.in.acme.cpu", json.dumps([T0 + 2 * i, 1.0]).encode())
        await nc.publish(subject, payload, headers=headers)
        await nc.publish(
            "dl.in.acme.cpu", json.dumps({"ts": T0 + 2 * i + 1, "value": 2.0}).encode()
        )
        sent_good += 2
    await nc.flush()

    await eventually(lambda: len(rejects) == len(BAD) and good_points(node, "cpu") == sent_good)
    reasons = Counter(str(r["reason"]) for r in rejects)
    assert reasons == Counter(reason for *_, reason in BAD)
    for r in rejects:
        assert r["detail"], r
        assert str(r["subject"]).startswith("dl.in.")
    too_long = next(r for r in rejects if r["reason"] == "invalid_tenant")
    assert too_long["subject"] == "dl.in." + "t" * 65 + ".cpu"
    millis = [r for r in rejects if "milliseconds" in str(r["detail"])]
    assert len(millis) == 1

    # Counted once committed (a replay republishes rejects, and must not count them twice):
    # the last reject's commit may land after its message went out.
    expected = [f'driftlock_rejects_total{{reason="{r}"}} {float(n)}' for r, n in reasons.items()]

    def all_counted() -> bool:
        metrics = scrape(node.metrics_port)
        return all(line in metrics for line in expected)

    await eventually(all_counted)


async def test_bad_points_inside_a_batch_leave_the_rest_applied(node: Node, nc: Client) -> None:
    rejects: list[dict[str, object]] = []

    async def on_reject(msg: Msg) -> None:
        rejects.append(json.loads(msg.data))

    await nc.subscribe("dl.rejected.acme", cb=on_reject)
    batch = [[T0, 1.0], [T0 + 1, "x"], {"ts": T0 + 2, "value": 3.0}, [T0 + 3], [T0 + 4, 5.0]]
    await nc.publish("dl.in.acme.mem", json.dumps(batch).encode())
    await nc.flush()
    await eventually(lambda: len(rejects) == 2 and good_points(node, "mem") == 3)
    assert [(r["index"], r["reason"]) for r in rejects] == [
        (1, "not_a_number"),
        (3, "invalid_shape"),
    ]
    rec = node.store.read_actor(partition_of("acme", "mem", TEST_PARTITIONS), "acme", "mem")
    assert rec is not None and rec.last_value == 5.0


async def test_publishing_straight_to_a_wrong_partition_is_rejected(node: Node, nc: Client) -> None:
    rejects: list[dict[str, object]] = []

    async def on_reject(msg: Msg) -> None:
        rejects.append(json.loads(msg.data))

    await nc.subscribe("dl.rejected.acme", cb=on_reject)
    right = partition_of("acme", "disk", TEST_PARTITIONS)
    wrong = (right + 1) % TEST_PARTITIONS
    await nc.jetstream().publish(f"dl.p.{wrong}.acme.disk", b"1")
    await eventually(lambda: len(rejects) == 1)
    assert rejects[0]["reason"] == "invalid_subject"
    assert "publish to dl.in.acme.disk" in str(rejects[0]["detail"])
    await asyncio.sleep(0.05)
    assert good_points(node, "disk") == 0


@pytest.mark.parametrize("remembered", [1, partition.CHECKED_SUBJECTS])
async def test_a_worker_judges_a_subject_the_same_every_time(
    node: Node, nc: Client, monkeypatch: pytest.MonkeyPatch, remembered: int
) -> None:
    """A worker checks a stream's subject once and remembers the verdict, up to a bound (one
    subject here: it forgets at each change): a misrouted subject is rejected each time, a
    good one beside it in the same partition applied each time."""
    monkeypatch.setattr(partition, "CHECKED_SUBJECTS", remembered)
    rejects: list[dict[str, object]] = []

    async def on_reject(msg: Msg) -> None:
        rejects.append(json.loads(msg.data))

    await nc.subscribe("dl.rejected.acme", cb=on_reject)
    wrong = (partition_of("acme", "net", TEST_PARTITIONS) + 1) % TEST_PARTITIONS
    metrics = (f"m{i}" for i in range(1000))
    here = next(m for m in metrics if partition_of("acme", m, TEST_PARTITIONS) == wrong)
    for i in range(3):
        await nc.jetstream().publish(f"dl.p.{wrong}.acme.net", b"1")
        await nc.publish(f"dl.in.acme.{here}", json.dumps([T0 + i, 1.0]).encode())
    await eventually(lambda: len(rejects) == 3 and good_points(node, here) == 3)
    assert {r["reason"] for r in rejects} == {"invalid_subject"}
    assert good_points(node, "net") == 0
