"""The Python partition function agrees with nats-server's own mapping."""

import asyncio
import random
import string

from nats.aio.client import Client
from nats.aio.msg import Msg

from driftlock.bus.nats_config import mapping_block
from driftlock.bus.partition import fnv1a_32, partition_of
from driftlock.bus.subjects import Subjects
from tests.conftest import TEST_PARTITIONS, eventually

TENANT_CHARS = string.ascii_letters + string.digits + "_-"
METRIC_CHARS = TENANT_CHARS + ":"


def random_id(rng: random.Random, chars: str, longest: int) -> str:
    return "".join(rng.choice(chars) for _ in range(rng.randint(1, longest)))


def test_fnv1a_known_vectors() -> None:
    # Published FNV-1a 32-bit test vectors.
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


async def test_python_partition_matches_server_on_thousands_of_ids(nc: Client) -> None:
    rng = random.Random(7)
    ids = {
        (random_id(rng, TENANT_CHARS, 64), random_id(rng, METRIC_CHARS, 200)) for _ in range(3000)
    }
    seen: dict[tuple[str, str], int] = {}

    async def on_msg(msg: Msg) -> None:
        _, _, n, tenant, metric = msg.subject.split(".")
        seen[(tenant, metric)] = int(n)

    await nc.subscribe("dl.p.>", cb=on_msg)
    for tenant, metric in ids:
        await nc.publish(Subjects().ingest(tenant, metric), b"1")
    await nc.flush()

    def all_seen() -> bool:
        return len(seen) == len(ids)

    await eventually(all_seen)
    mismatches = [(t, m) for (t, m), n in seen.items() if partition_of(t, m, TEST_PARTITIONS) != n]
    assert mismatches == []
    assert len(set(seen.values())) == TEST_PARTITIONS  # every partition is used


async def test_malformed_ingest_subjects_are_not_mapped(nc: Client) -> None:
    """What the subject guard relies on: only wrong-shaped ingest subjects stay under dl.in."""
    unmapped: list[str] = []

    async def on_msg(msg: Msg) -> None:
        unmapped.append(msg.subject)

    await nc.subscribe("dl.in.>", cb=on_msg)
    for subject in ("dl.in.acme.cpu", "dl.in.acme", "dl.in.acme.cpu.extra"):
        await nc.publish(subject, b"1")
    await nc.flush()
    await asyncio.sleep(0.2)
    assert sorted(unmapped) == ["dl.in.acme", "dl.in.acme.cpu.extra"]


def test_nats_config_block_names_the_partition_function() -> None:
    block = mapping_block(Subjects("dl"), 64)
    assert '"dl.in.*.*": "dl.p.{{partition(64,1,2)}}.{{wildcard(1)}}.{{wildcard(2)}}"' in block
