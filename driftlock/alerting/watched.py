"""A watched copy of the incidents bucket that keeps each value with the revision it was
written at, so a compare-and-set can start from the copy instead of a read. (The gateway's
KvCache keeps values only; here a value and its revision must never come from two
different moments, including while the watch reloads after a reconnect.)"""

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Generic, NamedTuple, TypeVar

import msgspec
from nats.js.kv import KeyValue

log = logging.getLogger("driftlock.alerting")

T = TypeVar("T")


class Versioned(NamedTuple, Generic[T]):
    revision: int
    value: T | None
    """None: deleted (the revision is the delete marker's)"""


class Watched(Generic[T]):
    def __init__(self, kv: KeyValue, kind: type[T]) -> None:
        self.kv = kv
        self._decoder = msgspec.json.Decoder(kind)
        self._entries: dict[str, Versioned[T]] = {}
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch_forever(), name=f"watch-{self.kv._name}")
        await asyncio.wait_for(self._loaded.wait(), 10)

    async def restart(self) -> None:
        await self.stop()
        self._loaded.clear()
        await self.start()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def get(self, key: str) -> T | None:
        found = self._entries.get(key)
        return found.value if found is not None else None

    def versioned(self, key: str) -> Versioned[T] | None:
        return self._entries.get(key)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter([(k, v.value) for k, v in self._entries.items() if v.value is not None])

    async def _watch_forever(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("incident watch failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _watch_once(self) -> None:
        watcher = await self.kv.watchall()
        # Reloading: build a new map and swap it in whole, so no entry of the old map is
        # ever paired with a revision of the new one.
        fresh: dict[str, Versioned[T]] | None = {}
        try:
            async for entry in watcher:
                if entry is None:
                    if fresh is not None:
                        self._entries, fresh = fresh, None
                        self._loaded.set()
                    continue
                target = fresh if fresh is not None else self._entries
                value: T | None = None
                if entry.operation not in ("DEL", "PURGE") and entry.value is not None:
                    try:
                        value = self._decoder.decode(entry.value)
                    except msgspec.DecodeError as exc:
                        log.warning("undecodable incident", extra={"key": entry.key,
                                                                   "error": str(exc)})  # fmt: skip
                        continue
                target[entry.key] = Versioned(entry.revision or 0, value)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
