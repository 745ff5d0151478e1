"""The heartbeat thread: renews this node's leases and rewrites its member record from a
thread with its own event loop and NATS connection.

A node working through a backlog keeps its event loop busy with detection for long
stretches; renewals queued behind that work arrived late, leases lapsed and partitions were
redone. Kafka met the same problem and moved its consumer heartbeat to a background thread
(KIP-62); so do we. A node whose loop is merely busy keeps its partitions; one that is dead
or cut off from NATS still loses them after a lease period.
"""

import asyncio
import logging
import threading
import time

import msgspec
from nats.js.kv import KeyValue

from driftlock.bus.connection import connect
from driftlock.cluster.leases import Leases
from driftlock.cluster.records import MemberRecord, member_key

log = logging.getLogger("driftlock.cluster")

_encoder = msgspec.json.Encoder()


class HeartbeatThread:
    def __init__(
        self,
        *,
        nats_url: str,
        prefix: str,
        leases: Leases,
        member: MemberRecord,
        interval_s: float,
    ) -> None:
        self._url, self._prefix, self._leases = nats_url, prefix, leases
        self._interval = interval_s
        self._member: MemberRecord | None = member
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="cluster-heartbeat", daemon=True)

    def start(self, timeout: float = 15.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"heartbeat thread did not start: {self._error!r}")

    def update_member(self, record: MemberRecord) -> None:
        self._member = record

    def stop_membership(self) -> None:
        """Stop rewriting the member record (the node is about to leave)."""
        self._member = None

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported to start(), or logged once running
            self._error = exc
            self._ready.set()
            log.exception("heartbeat thread stopped")

    async def _run(self) -> None:
        nc = await connect(self._url, name="driftlock-heartbeat")
        try:
            js = nc.jetstream()
            leases = await js.key_value(f"{self._prefix}_leases")
            members = await js.key_value(f"{self._prefix}_members")
            self._ready.set()
            while not self._stopping.is_set():
                started = time.monotonic()
                await self._beat(leases, members)
                pause = self._interval - (time.monotonic() - started)
                await asyncio.sleep(max(pause, 0.01))
        finally:
            await nc.close()

    async def _beat(self, leases: KeyValue, members: KeyValue) -> None:
        await self._leases.renew(leases)
        member = self._member
        if member is None:
            return
        record = msgspec.structs.replace(member, heartbeat_at=time.time())
        try:
            await members.put(member_key(record.id), _encoder.encode(record))
        except Exception as exc:
            log.warning("member heartbeat failed", extra={"error": repr(exc)})
