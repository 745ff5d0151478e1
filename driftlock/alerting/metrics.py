"""The alerter's Prometheus metrics, in their own registry."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.anomalies = Counter(
            "driftlock_alert_anomalies",
            "Anomalies consumed by the alerter, by outcome (routed, unrouted, duplicate)",
            ["outcome"],
            registry=r,
        )
        self.rejects = Counter(
            "driftlock_alert_rejects",
            "Messages on the anomaly stream the alerter could not use, by reason",
            ["reason"],
            registry=r,
        )
        self.notifications = Counter(
            "driftlock_alert_notifications",
            "Notification attempts by channel type and outcome (sent, failed, dead, capped)",
            ["channel_type", "outcome"],
            registry=r,
        )
        self.incidents = Gauge(
            "driftlock_alert_incidents", "Incidents by status", ["status"], registry=r
        )
        self.latency = Histogram(
            "driftlock_alert_notification_latency_seconds",
            "Anomaly detected → first notification delivered (includes group_wait)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.tick = Histogram(
            "driftlock_alert_tick_seconds",
            "Time to evaluate every incident once",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1),
            registry=r,
        )
