"""``Idempotency-Key`` on POST /v1/jobs and POST /v1/files.

The same key with the same body answers the object the first request created
(200 instead of 201); the same key with another body is a 422. The key is
claimed in the same transaction that creates the object, under a unique
constraint (owner, scope, key), so of any number of concurrent requests with one
key exactly one creates; the others wait for its commit and answer its object.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from advisor.errors import Problem
from api.errors import ApiError
from loracle.store.models import IdempotencyRow

HEADER = "Idempotency-Key"


def validate(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > 255 or not key.isprintable():
        raise ApiError(
            422,
            "invalid_request",
            f"{HEADER}: must be 1-255 printable characters, e.g. a UUID",
            [Problem(HEADER, "must be 1-255 printable characters", key[:300])],
        )
    return key


def body_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _mismatch(key: str) -> ApiError:
    return ApiError(
        422,
        "idempotency_key_reused",
        f"{HEADER} {key!r} was used with a different request body; use a new key for a new request",
        [Problem(HEADER, "was already used with a different body; use a new key", key)],
    )


def replay(s: Session, owner: str | None, scope: str, key: str, digest: str) -> str | None:
    """The id created earlier under this key, or None when the key is new."""
    row = s.scalar(
        select(IdempotencyRow).where(
            IdempotencyRow.owner == (owner or ""),
            IdempotencyRow.scope == scope,
            IdempotencyRow.key == key,
        )
    )
    if row is None:
        return None
    if row.request_hash != digest:
        raise _mismatch(key)
    return row.resource_id


def claim(
    s: Session, owner: str | None, scope: str, key: str, digest: str, resource_id: str
) -> None:
    """Record the key for an object being created in this transaction. Raises
    IntegrityError (after rolling back) when a concurrent request claimed it first."""
    s.add(
        IdempotencyRow(
            owner=owner or "", scope=scope, key=key, request_hash=digest, resource_id=resource_id
        )
    )
    try:
        s.flush()
    except IntegrityError:
        s.rollback()
        raise


def replay_or_claim(
    s: Session, owner: str | None, scope: str, key: str, digest: str, resource_id: str
) -> str | None:
    """The id an earlier request with this key created (answer that one), or None once the
    key is claimed for `resource_id`, which this transaction is creating."""
    existing = replay(s, owner, scope, key, digest)
    if existing is None:
        try:
            claim(s, owner, scope, key, digest, resource_id)
        except IntegrityError:  # a concurrent request with this key won
            existing = replay(s, owner, scope, key, digest)
    return existing
