"""Idempotency keys in the store: the id a key created, or a claim on a key for an object
being created in the same transaction. The unique constraint (owner, scope, key) makes the
claim the arbiter: of any number of concurrent requests with one key, exactly one creates."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from loracle.store.models import IdempotencyRow


class KeyReused(Exception):
    """The key was used before with a different request body."""


def replay(s: Session, owner: str | None, scope: str, key: str, digest: str) -> str | None:
    """The id created earlier under this key, or None when the key is new. Raises `KeyReused`
    when the key was used with another body."""
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
        raise KeyReused(key)
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
