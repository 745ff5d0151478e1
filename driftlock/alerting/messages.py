"""What each medium receives: the template context of an incident change, and the e-mail,
Slack and webhook (DriftLock or Alertmanager-compatible) messages built from it."""

from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import msgspec

from driftlock.alerting import templates
from driftlock.alerting.config import Channel, EmailConfig, SlackConfig, WebhookConfig
from driftlock.alerting.incident import Change, Incident, Status

NEVER = "0001-01-01T00:00:00Z"


def notification_id(inc: Incident, change: Change, channel_id: str) -> str:
    """Stable per incident change and channel: the receiver's idempotency key, and the same
    on every retry and on a takeover by another worker."""
    return f"{inc.tenant}.{inc.id}.{change.n}.{channel_id}"


def context(inc: Incident, change: Change, links: dict[str, str]) -> dict[str, Any]:
    incident = msgspec.to_builtins(inc)
    for private in ("seen_ids", "changes", "opens"):
        incident.pop(private, None)
    incident["route"] = inc.route.route
    anomalies = incident.pop("anomalies")
    ctx = {
        "incident": incident,
        "anomalies": anomalies,
        "change": {"kind": str(change.kind), "n": change.n, "step": change.step},
        "links": links,
        "tenant": inc.tenant,
    }
    ctx["title"] = templates.title(ctx)
    return ctx


def email_message(cfg: EmailConfig, ctx: dict[str, Any], nid: str) -> EmailMessage:
    msg = EmailMessage()
    subject = templates.render(cfg.subject_template, templates.EMAIL_SUBJECT, ctx)
    msg["Subject"] = " ".join(subject.split())[:250]  # one line, whatever the template did
    msg["From"] = cfg.from_addr
    msg["To"] = ", ".join(cfg.to)
    msg["Message-ID"] = f"<{nid}@driftlock>"
    msg["X-DriftLock-Notification-Id"] = nid
    msg.set_content(templates.render(cfg.body_template, templates.EMAIL_BODY, ctx))
    if cfg.html_template is not None or cfg.body_template is None:
        # The default HTML only stands beside the default text, never beside a custom one.
        html = templates.render(cfg.html_template, templates.EMAIL_HTML, ctx, html=True)
        msg.add_alternative(html, subtype="html")
    return msg


def slack_payload(cfg: SlackConfig, ctx: dict[str, Any]) -> dict[str, Any]:
    text = templates.render(cfg.template, templates.SLACK_TEXT, ctx)
    inc = ctx["incident"]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": f"{ctx['change']['kind'].title()}: {inc['tenant']} incident"[:150],
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}},
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"incident `{inc['id']}` · route {inc['route']} · {inc['status']}",
                }
            ],
        },
    ]
    ack = ctx["links"].get("ack")
    if ack and inc["status"] == Status.OPEN:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Acknowledge"},
                        "url": ack,
                        "style": "primary",
                    }
                ],
            }
        )
    return {"text": ctx["title"], "blocks": blocks}


def webhook_payload(
    cfg: WebhookConfig, channel: Channel, ctx: dict[str, Any], nid: str
) -> dict[str, Any]:
    summary = templates.render(cfg.template, templates.WEBHOOK_SUMMARY, ctx)
    if cfg.format == "alertmanager":
        return _alertmanager(channel, ctx, summary)
    return {
        "version": 1,
        "notification_id": nid,
        "change": ctx["change"],
        "incident": ctx["incident"],
        "anomalies": ctx["anomalies"],
        "summary": summary,
        "links": ctx["links"],
    }


def _iso(ts: float | None) -> str:
    if ts is None:
        return NEVER
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _alertmanager(channel: Channel, ctx: dict[str, Any], summary: str) -> dict[str, Any]:
    """Alertmanager's webhook payload (version 4): one alert per anomaly, so receivers
    written for Alertmanager work unchanged."""
    inc = ctx["incident"]
    resolved = inc["status"] == Status.RESOLVED
    status = "resolved" if resolved else "firing"
    alerts = [
        {
            "status": status,
            "labels": {
                "alertname": "DriftLockAnomaly",
                **inc["labels"],
                "metric": a["metric"],
                "kind": a["kind"],
            },
            "annotations": {
                "summary": summary,
                "value": str(a["value"]),
                "score": f"{a['score']:.3f}",
            },
            "startsAt": _iso(a["detected_at"]),
            "endsAt": _iso(inc["resolved_at"]) if resolved else NEVER,
            "generatorURL": ctx["links"].get("incident", ""),
            "fingerprint": a["id"],
        }
        for a in ctx["anomalies"]
    ]
    return {
        "version": "4",
        "groupKey": f"{inc['route']}:{inc['id']}",
        "truncatedAlerts": max(0, inc["anomaly_count"] - len(alerts)),
        "status": status,
        "receiver": channel.name,
        "groupLabels": inc["group"],
        "commonLabels": {"alertname": "DriftLockAnomaly", **inc["labels"]},
        "commonAnnotations": {"summary": summary},
        "externalURL": ctx["links"].get("incident", ""),
        "alerts": alerts,
    }
