"""Everything that talks to NATS: connection, subjects, partitions, streams, the pull feed,
and the managed nats-server."""

from driftlock.bus.partition import partition_of
from driftlock.bus.subjects import Subjects

__all__ = ["Subjects", "partition_of"]
