"""LMDB commit cost: one fsync'd transaction per record (what a per-event commit would do)
against DriftLock's StateStore, which commits a batch per transaction and merges waiting
commits of many partitions into one (group commit).

    python -m bench.lmdb_commit [--records N]
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import lmdb
import uvloop

from bench.common import print_table, write_results
from driftlock.state import ActorRecord, StateStore
from driftlock.state.records import encode
from driftlock.state.store import actor_key


def per_record(path: Path, records: int, value: bytes) -> float:
    env = lmdb.open(str(path), map_size=1 << 30, sync=True, metasync=False)
    started = time.perf_counter()
    for i in range(records):
        with env.begin(write=True) as txn:
            txn.put(b"%08d" % i, value)
    rate = records / (time.perf_counter() - started)
    env.close()
    return rate


async def batched(path: Path, records: int, value: bytes, partitions: int, batch: int) -> float:
    store = StateStore(path)

    async def worker(p: int) -> None:
        for start in range(0, records // partitions, batch):
            puts = {actor_key(p, "t", f"m{start + i}"): value for i in range(batch)}
            await store.commit(p, puts, start + batch)

    started = time.perf_counter()
    await asyncio.gather(*(worker(p) for p in range(partitions)))
    rate = records / (time.perf_counter() - started)
    store.close()
    return rate


async def main(records: int) -> dict[str, float]:
    value = encode(ActorRecord())
    with tempfile.TemporaryDirectory() as tmp:
        single = per_record(Path(tmp) / "single", min(records, 5000), value)
        one_partition = await batched(Path(tmp) / "one", records, value, 1, 1000)
        many = await batched(Path(tmp) / "many", records, value, 64, 100)
    results = {
        "fsync per record": single,
        "1 partition, 1000-record commits": one_partition,
        "64 partitions, 100-record commits": many,
    }
    print_table(
        f"LMDB commits ({len(value)}-byte records, records/s)",
        ["mode", "records/s", "vs per record"],
        [[k, v, f"{v / single:.0f}x"] for k, v in results.items()],
    )
    return results


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=128_000)
    args = parser.parse_args()
    results = uvloop.run(main(args.records))
    print("wrote", write_results("lmdb_commit", {"records": args.records, **results}))


if __name__ == "__main__":
    cli()
