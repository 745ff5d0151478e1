"""Alerting: anomalies grouped into incidents and delivered by e-mail, Slack and webhooks,
with routing, escalation, silences, maintenance windows, inhibition, flap control and a
notification log that makes several workers send each notification once."""

from driftlock.alerting.service import Alerter, AlerterConfig
from driftlock.alerting.store import AlertingStore

__all__ = ["Alerter", "AlerterConfig", "AlertingStore"]
