"""Running DriftLock on several nodes (DESIGN §3): membership, rendezvous assignment,
leases and partition snapshots, so partitions move between nodes with their state."""
