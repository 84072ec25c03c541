"""Sending the outbox (loracle.store.webhooks), signed as the Standard Webhooks spec says.

Each delivery is a POST of its JSON payload with three headers:

- `webhook-id`: the delivery's id, the same on every retry (receivers deduplicate by it);
- `webhook-timestamp`: Unix seconds of this try;
- `webhook-signature`: `v1,<base64 HMAC-SHA256>` of `"{id}.{timestamp}.{body}"`, keyed with
  the endpoint's secret (the base64 after `whsec_`).

A 2xx answer delivers it. Anything else (another status, a timeout, a refused connection) is
tried again after `base x 2^(tries - 1)` seconds, capped at an hour, until 24 hours after the
event (`give_up_after_s`); then it is given up, with its last error kept.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta

import httpx

from loracle.settings import Settings
from loracle.store import webhooks as store
from loracle.store.db import session
from loracle.store.models import now

log = logging.getLogger("loracle.webhooks")

MAX_BACKOFF_S = 3600.0


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def backoff_s(base_s: float, tries: int) -> float:
    return float(min(base_s * 2 ** max(tries - 1, 0), MAX_BACKOFF_S))


def deliver_due(settings: Settings, limit: int = 50) -> int:
    """One round: send what is due; returns how many were delivered."""
    timeout = settings.webhook_timeout_s
    with session(settings.resolved_database_url) as s:
        due = [
            (d.id, d.payload, d.attempts, d.created_at, e.url, e.secret)
            for d, e in store.claim_due(s, limit, timedelta(seconds=timeout * 2 + 5))
        ]
    delivered = 0
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for msg_id, payload, attempts, created_at, url, secret in due:
            body = json.dumps(payload, separators=(",", ":")).encode()
            stamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": signature(secret, msg_id, stamp, body),
            }
            error = None
            try:
                answer = client.post(url, content=body, headers=headers)
                if not answer.is_success:
                    error = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                error = f"{exc.__class__.__name__}: {exc}"
            tries = attempts + 1
            next_at = None
            if error is not None:
                after = now() + timedelta(seconds=backoff_s(settings.webhook_retry_base_s, tries))
                if (after - created_at).total_seconds() <= settings.webhook_give_up_after_s:
                    next_at = after
                log.warning("webhook %s to %s failed (try %d): %s", msg_id, url, tries, error)
            else:
                delivered += 1
            with session(settings.resolved_database_url) as s:
                store.record_attempt(s, msg_id, error is None, error, next_at)
    return delivered
