"""Rendezvous (highest random weight) hashing: every supervisor computes the same owner for
every partition from the same member set, and a join or leave moves only the partitions
that the new member wins or the old one held."""

import hashlib
import math
from collections.abc import Mapping


def _unit(member: str, partition: int) -> float:
    """A uniform number in (0, 1) that depends only on (member, partition)."""
    digest = hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def score(member: str, weight: float, partition: int) -> float:
    """Weighted rendezvous score (-w / ln u): a member of weight 2 wins twice as often."""
    return -weight / math.log(_unit(member, partition))


def owner(members: Mapping[str, float], partition: int) -> str | None:
    """The member with the highest score; ties (never in practice) go to the smaller id."""
    best: tuple[float, str] | None = None
    for member, weight in members.items():
        if weight <= 0:
            continue
        candidate = (score(member, weight, partition), member)
        if best is None or candidate[0] > best[0] or (candidate[0] == best[0] and member < best[1]):
            best = candidate
    return best[1] if best is not None else None


def assignment(members: Mapping[str, float], partitions: int) -> list[str | None]:
    """Owner of each partition 0..partitions-1 (None when no member has a positive weight)."""
    return [owner(members, p) for p in range(partitions)]
