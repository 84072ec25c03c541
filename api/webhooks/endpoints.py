"""/v1/webhooks: each key's endpoints for its jobs' outcomes (loracle.webhooks sends them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import DbDep, OwnerDep
from api.errors import ApiError
from api.schemas import error_responses
from api.webhooks.schemas import (
    DeliveryList,
    WebhookCreate,
    WebhookDeleted,
    WebhookList,
    WebhookOut,
)
from loracle.store import webhooks as store
from loracle.store.models import WebhookEndpointRow

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def _out(row: WebhookEndpointRow, secret: bool = False) -> WebhookOut:
    return WebhookOut(
        id=row.id,
        url=row.url,
        events=list(row.events or []),
        created_at=int(row.created_at.timestamp()),
        secret=row.secret if secret else None,
    )


def _endpoint(s: DbDep, owner: str | None, endpoint_id: str) -> WebhookEndpointRow:
    row = store.get_endpoint(s, endpoint_id, owner)
    if row is None:
        raise ApiError(
            404, "not_found", f"no webhook endpoint {endpoint_id!r}; list yours at /v1/webhooks"
        )
    return row


@router.post("", status_code=201, response_model=WebhookOut, responses=error_responses(422))
def create_endpoint(body: WebhookCreate, s: DbDep, owner: OwnerDep) -> Any:
    """Register a URL for this key's jobs: each succeeded, failed, cancelled or paused job
    is POSTed there (signed with the secret in this answer), at least once, retried with
    backoff for 24 hours."""
    row = store.add_endpoint(s, owner, body.url, list(body.events))
    s.commit()
    return _out(row, secret=True)


@router.get("", response_model=WebhookList)
def list_endpoints(s: DbDep, owner: OwnerDep) -> Any:
    return {"object": "list", "data": [_out(r) for r in store.list_endpoints(s, owner)]}


@router.get(
    "/{endpoint_id}/deliveries", response_model=DeliveryList, responses=error_responses(404)
)
def list_deliveries(endpoint_id: str, s: DbDep, owner: OwnerDep) -> Any:
    """The endpoint's latest deliveries, newest first: tries, and the last error."""
    _endpoint(s, owner, endpoint_id)
    return {
        "object": "list",
        "data": [
            {
                "id": d.id,
                "type": d.type,
                "created_at": int(d.created_at.timestamp()),
                "attempts": d.attempts,
                "delivered": d.delivered_at is not None,
                "gave_up": d.gave_up_at is not None,
                "last_error": d.last_error,
            }
            for d in store.deliveries(s, endpoint_id)
        ],
    }


@router.delete("/{endpoint_id}", response_model=WebhookDeleted, responses=error_responses(404))
def delete_endpoint(endpoint_id: str, s: DbDep, owner: OwnerDep) -> Any:
    store.delete_endpoint(s, _endpoint(s, owner, endpoint_id))
    s.commit()
    return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}
