"""DriftLock: real-time anomaly detection on NATS JetStream."""

__version__ = "0.1.0"
