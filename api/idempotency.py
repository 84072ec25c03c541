"""``Idempotency-Key`` on POST /v1/jobs and POST /v1/files.

The same key with the same body answers the object the first request created
(200 instead of 201); the same key with another body is a 422. The key is
claimed in the same transaction that creates the object (`loracle.store.idempotency`),
so of any number of concurrent requests with one key exactly one creates; the others
wait for its commit and answer its object.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy.orm import Session

from api.errors import ApiError
from loracle.errors import Problem
from loracle.store import idempotency

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


def replay_or_claim(
    s: Session, owner: str | None, scope: str, key: str, digest: str, resource_id: str
) -> str | None:
    """The id an earlier request with this key created (answer that one), or None once the
    key is claimed for `resource_id`; a key used with another body is a 422."""
    try:
        return idempotency.replay_or_claim(s, owner, scope, key, digest, resource_id)
    except idempotency.KeyReused:
        raise _mismatch(key) from None
