"""Cluster membership in KV bucket `<prefix>_members`: every node writes its heartbeat
record under `node.<id>`; a member whose record has not changed for `ttl_s` (on this node's
clock, see leases.py) is no longer live. Drain requests live in `<prefix>_drains`."""

import time
from collections.abc import Callable

import msgspec
from nats.js.kv import KeyValue

from driftlock.cluster.records import DrainRecord, MemberRecord, member_key
from driftlock.gateway.kvcache import KvCache

_encoder = msgspec.json.Encoder()


class Membership:
    def __init__(
        self,
        members: KeyValue,
        drains: KeyValue,
        *,
        node_id: str,
        weight: float,
        ttl_s: float,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.node_id, self.weight, self._ttl = node_id, weight, ttl_s
        self.members: KvCache[MemberRecord] = KvCache(members, MemberRecord, on_change)
        self.drains: KvCache[DrainRecord] = KvCache(drains, DrainRecord, on_change)

    async def start(self) -> None:
        await self.members.start()
        await self.drains.start()

    async def stop(self) -> None:
        await self.members.stop()
        await self.drains.stop()

    async def restart(self) -> None:
        await self.members.restart()
        await self.drains.restart()

    async def leave(self) -> None:
        await self.members.kv.delete(member_key(self.node_id))

    def draining(self, node_id: str) -> bool:
        return self.drains.get(node_id) is not None

    def live(self) -> dict[str, float]:
        """Live members and their weights; a draining member weighs 0 (owns nothing).
        This node counts as live: its own heartbeat is the one thing it need not see."""
        now = time.monotonic()
        weights = {self.node_id: self.weight}
        for key, record in self.members.items():
            seen = self.members.seen(key)
            if record.id != self.node_id and (seen is None or now - seen.at > self._ttl):
                continue
            weights[record.id] = record.weight
        return {node: 0.0 if self.draining(node) else w for node, w in weights.items()}


async def request_drain(drains: KeyValue, node_id: str, *, drain: bool) -> None:
    """`driftlock cluster drain|undrain`: the node hands off everything it owns (or takes
    its share again) at its next heartbeat."""
    if drain:
        await drains.put(node_id, _encoder.encode(DrainRecord(requested_at=time.time())))
    else:
        await drains.delete(node_id)
