"""Webhook endpoints and the outbox of deliveries (the delivery itself: loracle.webhooks).

A job's status change that a webhook reports (`JOB_EVENTS`) writes one delivery per endpoint
of the job's owner, in the same transaction as the status change (`enqueue_for_job`, called
by loracle.store.jobs when it records the status event): no change is lost between the store
and the sender. `claim_due` hands out deliveries whose time has come, moving their next
attempt forward first, so that two senders do not send one at once."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from loracle.store.models import JobRow, WebhookDeliveryRow, WebhookEndpointRow, now

# The job statuses a webhook reports, and the event type of each (OpenAI's names).
JOB_EVENTS = {
    "succeeded": "fine_tuning.job.succeeded",
    "failed": "fine_tuning.job.failed",
    "cancelled": "fine_tuning.job.cancelled",
    "paused": "fine_tuning.job.paused",
}


def new_secret() -> str:
    """A Standard Webhooks secret: 'whsec_' and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def add_endpoint(s: Session, owner: str | None, url: str, events: list[str]) -> WebhookEndpointRow:
    row = WebhookEndpointRow(
        id="wh-" + secrets.token_hex(12), owner=owner, url=url, secret=new_secret(), events=events
    )
    s.add(row)
    s.flush()
    return row


def list_endpoints(s: Session, owner: str | None) -> list[WebhookEndpointRow]:
    query = (
        select(WebhookEndpointRow)
        .where(WebhookEndpointRow.owner == owner)
        .order_by(WebhookEndpointRow.pk)
    )
    return list(s.scalars(query))


def get_endpoint(s: Session, endpoint_id: str, owner: str | None) -> WebhookEndpointRow | None:
    return s.scalar(
        select(WebhookEndpointRow).where(
            WebhookEndpointRow.id == endpoint_id, WebhookEndpointRow.owner == owner
        )
    )


def delete_endpoint(s: Session, row: WebhookEndpointRow) -> None:
    """The endpoint and its deliveries not yet made."""
    s.execute(
        update(WebhookDeliveryRow)
        .where(
            WebhookDeliveryRow.endpoint_id == row.id,
            WebhookDeliveryRow.delivered_at.is_(None),
            WebhookDeliveryRow.gave_up_at.is_(None),
        )
        .values(gave_up_at=now(), last_error="the endpoint was deleted")
        .execution_options(synchronize_session=False)
    )
    s.delete(row)
    s.flush()


def enqueue_for_job(s: Session, job_id: str, status: str) -> int:
    """One delivery per endpoint of the job's owner that wants this status's event; returns
    how many. Runs in the caller's transaction."""
    kind = JOB_EVENTS.get(status)
    if kind is None:
        return 0
    owner = s.scalar(select(JobRow.owner).where(JobRow.id == job_id))
    stamp = now()
    count = 0
    for endpoint in list_endpoints(s, owner):
        if endpoint.events and kind not in endpoint.events:
            continue
        delivery_id = "msg_" + secrets.token_hex(12)
        s.add(
            WebhookDeliveryRow(
                id=delivery_id,
                endpoint_id=endpoint.id,
                type=kind,
                payload={
                    "id": delivery_id,
                    "object": "event",
                    "type": kind,
                    "created_at": int(stamp.timestamp()),
                    "data": {"id": job_id, "status": status},
                },
                created_at=stamp,
                next_attempt_at=stamp,
            )
        )
        count += 1
    return count


def claim_due(
    s: Session, limit: int, lease: timedelta, at: datetime | None = None
) -> list[tuple[WebhookDeliveryRow, WebhookEndpointRow]]:
    """Deliveries due now, each with its endpoint, claimed for `lease` (their next attempt
    moved past it) so that another sender leaves them alone meanwhile."""
    at = at or now()
    rows = list(
        s.scalars(
            select(WebhookDeliveryRow)
            .where(
                WebhookDeliveryRow.delivered_at.is_(None),
                WebhookDeliveryRow.gave_up_at.is_(None),
                WebhookDeliveryRow.next_attempt_at <= at,
            )
            .order_by(WebhookDeliveryRow.next_attempt_at)
            .limit(limit)
        )
    )
    claimed = []
    for row in rows:
        taken = s.execute(
            update(WebhookDeliveryRow)
            .where(
                WebhookDeliveryRow.id == row.id,
                WebhookDeliveryRow.next_attempt_at == row.next_attempt_at,
            )
            .values(next_attempt_at=at + lease)
            .execution_options(synchronize_session=False)
        )
        endpoint = s.scalar(
            select(WebhookEndpointRow).where(WebhookEndpointRow.id == row.endpoint_id)
        )
        if getattr(taken, "rowcount", 0) and endpoint is not None:
            claimed.append((row, endpoint))
    return claimed


def record_attempt(
    s: Session,
    delivery_id: str,
    delivered: bool,
    error: str | None,
    next_attempt_at: datetime | None,
) -> None:
    """After a try: delivered, or the error and the next try (None: given up)."""
    stamp = now()
    values: dict[str, Any] = {"attempts": WebhookDeliveryRow.attempts + 1, "last_error": error}
    if delivered:
        values["delivered_at"] = stamp
    elif next_attempt_at is None:
        values["gave_up_at"] = stamp
    else:
        values["next_attempt_at"] = next_attempt_at
    s.execute(
        update(WebhookDeliveryRow)
        .where(WebhookDeliveryRow.id == delivery_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def deliveries(s: Session, endpoint_id: str, limit: int = 100) -> list[WebhookDeliveryRow]:
    query = (
        select(WebhookDeliveryRow)
        .where(WebhookDeliveryRow.endpoint_id == endpoint_id)
        .order_by(WebhookDeliveryRow.pk.desc())
        .limit(limit)
    )
    return list(s.scalars(query))
