"""Workers in the store: each registers its cards when it starts, renews a lease with its
heartbeat, and leaves when it stops. A worker whose lease ran out (killed, lost host) is no
longer listed and places nothing; its row is replaced when it registers again."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from loracle.store.jobs import store_now
from loracle.store.models import WorkerRow


def register(s: Session, worker_id: str, ttl_s: float, **fields: Any) -> WorkerRow:
    """Record (or replace) a worker: host, card_class, cards, device, version, concurrency,
    queues. Its lease runs `ttl_s` from now, by the store's clock."""
    stamp = store_now(s)
    s.execute(delete(WorkerRow).where(WorkerRow.id == worker_id))
    row = WorkerRow(
        id=worker_id,
        started_at=stamp,
        heartbeat_at=stamp,
        expires_at=stamp + timedelta(seconds=ttl_s),
        **fields,
    )
    s.add(row)
    s.flush()
    return row


def heartbeat(s: Session, worker_id: str, ttl_s: float, cards: list[Any] | None = None) -> bool:
    """Renew a worker's lease (and its cards' free memory); False when it is not registered
    (its row was removed): the caller registers again."""
    stamp = store_now(s)
    values: dict[str, Any] = {
        "heartbeat_at": stamp,
        "expires_at": stamp + timedelta(seconds=ttl_s),
    }
    if cards is not None:
        values["cards"] = cards
    result = s.execute(
        update(WorkerRow)
        .where(WorkerRow.id == worker_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def deregister(s: Session, worker_id: str) -> None:
    s.execute(delete(WorkerRow).where(WorkerRow.id == worker_id))


def live(s: Session) -> list[WorkerRow]:
    """Workers whose lease has not run out, oldest first."""
    stamp = store_now(s)
    query = select(WorkerRow).where(WorkerRow.expires_at > stamp).order_by(WorkerRow.pk)
    return list(s.scalars(query))


def get(s: Session, worker_id: str) -> WorkerRow | None:
    return s.scalar(select(WorkerRow).where(WorkerRow.id == worker_id))
