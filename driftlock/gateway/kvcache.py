"""A local copy of one JetStream KV bucket, kept current by a watch, with the revision of
every key (for compare-and-set from the copy) and when this process saw it change.

Reads never touch NATS; writes go to the bucket (the source of truth) and into the copy at
once, so the writing gateway reads its own writes while the others learn them through their
watch. The watch is rebuilt from scratch after a reconnect, so a nats-server restart cannot
leave a stale copy behind.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

import msgspec
from nats.js.kv import KeyValue

log = logging.getLogger("driftlock.gateway.kv")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Seen:
    """When this process last saw a key change: leases and heartbeats expire by how long
    their revision has stood still here, so no two clocks are ever compared."""

    revision: int
    at: float  # time.monotonic()


class Versioned(NamedTuple, Generic[T]):
    """A value with the revision it was written at, for a compare-and-set from the copy."""

    revision: int
    value: T | None
    """None: deleted (the revision is the delete marker's)"""


class KvCache(Generic[T]):
    def __init__(
        self, kv: KeyValue, kind: type[T], on_change: Callable[[], None] | None = None
    ) -> None:
        self.kv = kv
        self._decoder = msgspec.json.Decoder(kind)
        self._encoder = msgspec.json.Encoder()
        self._entries: dict[str, T] = {}
        self._seen: dict[str, Seen] = {}
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()

    async def start(self) -> None:
        self._spawn()
        await asyncio.wait_for(self._loaded.wait(), 10)

    async def restart(self) -> None:
        """Drop the watch and load the bucket again (after a reconnect). It does not wait for
        the load: the current entries serve until the new ones are in, and a watch that cannot
        start yet (a cluster electing leaders) keeps trying on its own."""
        await self.stop()
        self._spawn()

    def _spawn(self) -> None:
        self._task = asyncio.create_task(self._watch_forever(), name=f"kv-watch-{self.kv._name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def get(self, key: str) -> T | None:
        return self._entries.get(key)

    def values(self) -> Iterator[T]:
        return iter(list(self._entries.values()))

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._entries.items()))

    def seen(self, key: str) -> Seen | None:
        return self._seen.get(key)

    def versioned(self, key: str) -> Versioned[T] | None:
        seen = self._seen.get(key)
        return Versioned(seen.revision, self._entries.get(key)) if seen is not None else None

    async def put(self, key: str, value: T) -> None:
        revision = await self.kv.put(key, self._encoder.encode(value))
        self._remember(key, revision, value)

    async def create(self, key: str, value: T) -> bool:
        """Put only if absent (compare-and-set on revision 0); False if it exists."""
        try:
            revision = await self.kv.create(key, self._encoder.encode(value))
        except Exception as exc:  # nats-py raises KeyWrongLastSequenceError / APIError here
            if "wrong last sequence" in str(exc).lower() or "exists" in str(exc).lower():
                return False
            raise
        self._remember(key, revision, value)
        return True

    async def delete(self, key: str) -> None:
        await self.kv.delete(key)
        # The marker's revision comes with the watch; until then the key is simply unknown.
        self._entries.pop(key, None)
        self._seen.pop(key, None)

    def _remember(self, key: str, revision: int, value: T) -> None:
        self._entries[key] = value
        self._seen[key] = Seen(revision, time.monotonic())

    async def _watch_forever(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                extra = {"bucket": self.kv._name, "error": repr(exc)}
                log.warning("kv watch failed; retrying", extra=extra)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _watch_once(self) -> None:
        watcher = await self.kv.watchall()
        # A reload builds new maps and swaps them in together, so a value is never paired
        # with a revision from another moment.
        fresh: tuple[dict[str, T], dict[str, Seen]] | None = ({}, {})
        try:
            async for entry in watcher:
                if fresh is None:  # loaded: every entry is a change
                    if entry is not None:
                        self._apply(entry, self._entries, self._seen)
                        self._changed()
                    continue
                if entry is not None:
                    self._apply(entry, *fresh)
                if await self._initial_values_in(entry):
                    (self._entries, self._seen), fresh = fresh, None
                    self._loaded.set()
                    self._changed()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _apply(self, entry: KeyValue.Entry, entries: dict[str, T], seen: dict[str, Seen]) -> None:
        seen[entry.key] = Seen(entry.revision or 0, time.monotonic())
        value = self._decode(entry.key, entry.operation, entry.value)
        if value is None:
            entries.pop(entry.key, None)
        else:
            entries[entry.key] = value

    async def _initial_values_in(self, entry: KeyValue.Entry | None) -> bool:
        """Whether the watch has delivered the bucket as it was when it started. The last of
        those entries has nothing pending after it. nats-py's own end marker (None) is only
        trusted for an empty bucket: it also sends it when its new consumer reports nothing
        pending while the entries are still in flight, which on a three-server cluster would
        swap in an empty copy and refuse every API key until the entries arrive."""
        if entry is not None:
            return entry.delta == 0
        return (await self.kv.status()).values == 0

    def _decode(self, key: str, operation: str | None, data: bytes | None) -> T | None:
        """The entry's value; None for a delete, a purge or an undecodable value."""
        if operation in ("DEL", "PURGE") or data is None:
            return None
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            log.warning("skipping undecodable kv entry", extra={"key": key, "error": str(exc)})
            return None

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()
