"""Talking to the outside: SMTP (aiosmtplib), Slack incoming webhooks and signed generic
webhooks (httpx). One attempt per call; retries and backoff are the delivery's business."""

import hashlib
import hmac
import json
import time
from typing import Any

import aiosmtplib
import httpx
from opentelemetry import propagate

from driftlock.alerting import messages
from driftlock.alerting.config import Channel, EmailConfig, SlackConfig, WebhookConfig
from driftlock.errors import DriftLockError

SIGNATURE_HEADER = "X-DriftLock-Signature"
TIMESTAMP_HEADER = "X-DriftLock-Timestamp"
ID_HEADER = "X-DriftLock-Notification-Id"


class DeliveryError(DriftLockError):
    """One attempt failed. `retryable` is False when trying again cannot help (the
    receiver refused the request itself, e.g. 400 or 404)."""

    code = "delivery_failed"

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>`: the timestamp is signed too,
    so a receiver that refuses old timestamps cannot be fed a replayed request."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


async def send(
    channel: Channel,
    ctx: dict[str, Any],
    nid: str,
    http: httpx.AsyncClient,
    timeout: float,
) -> None:
    cfg = channel.config
    if isinstance(cfg, EmailConfig):
        await _email(cfg, ctx, nid, timeout)
    elif isinstance(cfg, SlackConfig):
        await _post(http, cfg.webhook_url, messages.slack_payload(cfg, ctx), {}, timeout)
    else:
        await _webhook(http, cfg, channel, ctx, nid, timeout)


async def _email(cfg: EmailConfig, ctx: dict[str, Any], nid: str, timeout: float) -> None:
    msg = messages.email_message(cfg, ctx, nid)
    try:
        await aiosmtplib.send(
            msg,
            hostname=cfg.host,
            port=cfg.port,
            username=cfg.username,
            password=cfg.password,
            use_tls=cfg.tls,
            start_tls=cfg.starttls if not cfg.tls else False,
            timeout=timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"smtp: recipients refused: {exc}", retryable=False) from None
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(f"smtp {cfg.host}:{cfg.port}: login refused: {exc}",
                            retryable=False) from None  # fmt: skip
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"smtp {cfg.host}:{cfg.port}: {exc}") from None


async def _webhook(
    http: httpx.AsyncClient,
    cfg: WebhookConfig,
    channel: Channel,
    ctx: dict[str, Any],
    nid: str,
    timeout: float,
) -> None:
    body = json.dumps(messages.webhook_payload(cfg, channel, ctx, nid)).encode()
    timestamp = str(int(time.time()))
    headers = {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(cfg.secret, timestamp, body),
        ID_HEADER: nid,
        "Idempotency-Key": nid,
    }
    await _post(http, cfg.url, body, headers, timeout)


async def _post(
    http: httpx.AsyncClient,
    url: str,
    payload: dict[str, Any] | bytes,
    headers: dict[str, str],
    timeout: float,
) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "DriftLock", **headers}
    propagate.inject(headers)  # the receiver can continue the anomaly's trace
    try:
        r = await http.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"POST {safe_url(url)}: {type(exc).__name__}: {exc}") from None
    if r.status_code >= 300:
        retryable = r.status_code >= 500 or r.status_code in (408, 425, 429)
        raise DeliveryError(
            f"POST {safe_url(url)}: HTTP {r.status_code} {r.text[:200]!r}", retryable=retryable
        )


def safe_url(url: str) -> str:
    """Slack webhook URLs are secrets: errors show scheme and host only."""
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}{':' + str(parsed.port) if parsed.port else ''}/…"
