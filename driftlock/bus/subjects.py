"""Every NATS subject and JetStream name DriftLock uses, derived from one prefix."""

from dataclasses import dataclass

PROBE_TENANT = "~probe"
"""Reserved tenant of the start-up mapping probe; it breaks the id rules on purpose, so no
producer can use it, and workers drop it silently."""


@dataclass(frozen=True, slots=True)
class Subjects:
    prefix: str = "dl"

    @property
    def ingest_wildcard(self) -> str:
        return f"{self.prefix}.in.*.*"

    @property
    def ingest_all(self) -> str:
        return f"{self.prefix}.in.>"

    def ingest(self, tenant: str, metric: str) -> str:
        return f"{self.prefix}.in.{tenant}.{metric}"

    @property
    def partitioned_all(self) -> str:
        return f"{self.prefix}.p.>"

    def partition_filter(self, partition: int) -> str:
        return f"{self.prefix}.p.{partition}.>"

    def partition_mapping(self, partitions: int) -> str:
        target = f"partition({partitions},1,2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)"
        return f"{self.prefix}.p.{{{{{target}}}}}"

    def anomaly(self, tenant: str, metric: str) -> str:
        return f"{self.prefix}.anomaly.{tenant}.{metric}"

    @property
    def anomaly_all(self) -> str:
        return f"{self.prefix}.anomaly.>"

    def anomaly_store(self, tenant: str, metric: str) -> str:
        """Subject anomalies are published to; DL_ANOMALIES stores them and republishes
        only what it stored to `anomaly()`, so a replayed duplicate never reaches subscribers."""
        return f"{self.prefix}.x.anomaly.{tenant}.{metric}"

    @property
    def anomaly_store_all(self) -> str:
        return f"{self.prefix}.x.anomaly.>"

    def rejected(self, tenant: str) -> str:
        return f"{self.prefix}.rejected.{tenant}"

    @property
    def events_stream(self) -> str:
        return f"{self.prefix.upper().replace('.', '_')}_EVENTS"

    @property
    def anomalies_stream(self) -> str:
        return f"{self.prefix.upper().replace('.', '_')}_ANOMALIES"
