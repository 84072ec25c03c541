"""Reading and changing tries in the store: a succeeded job's base and adapter given the same
prompts (POST /v1/fine_tuning/jobs/{id}/try).

A try is `queued` when the API stores it, `running` once a worker's inference consumer takes
it, then `succeeded` (with its completions) or `failed` (with an error code). As for jobs,
every change is one conditional UPDATE, so the API timing a try out and a worker finishing it
cannot both win. A try unfinished `timeout_s` after it was asked is failed with `try_timeout`
(`expire`), by whichever process looks first: the API before it counts a key's tries or
answers one, the worker before it starts one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from loracle.store.jobs import new_id, store_now
from loracle.store.models import TryRow

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
UNFINISHED = (QUEUED, RUNNING)
TIMED_OUT = "try_timeout"


def add_try(s: Session, job_id: str, owner: str | None, request: dict[str, Any]) -> TryRow:
    row = TryRow(
        id=new_id("try"),
        job_id=job_id,
        owner=owner,
        status=QUEUED,
        request=request,
        created_at=store_now(s),
    )
    s.add(row)
    s.flush()
    return row


def get_try(
    s: Session, try_id: str, job_id: str | None = None, owner: str | None = None
) -> TryRow | None:
    """The try, when it belongs to `job_id` and `owner` (None: any job, any owner; the
    API always names both)."""
    q = select(TryRow).where(TryRow.id == try_id)
    if job_id is not None:
        q = q.where(TryRow.job_id == job_id, TryRow.owner == owner)
    return s.scalar(q)


def expire(s: Session, timeout_s: float, owner: str | None = None) -> int:
    """Fail the unfinished tries asked more than `timeout_s` ago (all, or `owner`'s) with
    `try_timeout`; returns how many."""
    at = store_now(s)
    q = (
        update(TryRow)
        .where(
            TryRow.status.in_(UNFINISHED),
            TryRow.created_at < at - timedelta(seconds=timeout_s),
        )
        .values(
            status=FAILED,
            error_code=TIMED_OUT,
            error_message=f"no completions within {timeout_s:g} s (LORACLE_TRY_TIMEOUT_S): "
            "no worker of the job's card class took it, or it ran past the limit; ask again",
            finished_at=at,
        )
    )
    if owner is not None:
        q = q.where(TryRow.owner == owner)
    return s.execute(q).rowcount  # type: ignore[attr-defined]


def in_flight(s: Session, owner: str | None) -> list[datetime]:
    """When each of `owner`'s unfinished tries was asked, oldest first (call `expire` first)."""
    q = (
        select(TryRow.created_at)
        .where(TryRow.owner == owner, TryRow.status.in_(UNFINISHED))
        .order_by(TryRow.created_at)
    )
    return list(s.scalars(q))


def start(s: Session, try_id: str, worker: str) -> bool:
    """Take a queued try (False when another delivery took it, or it timed out)."""
    q = (
        update(TryRow)
        .where(TryRow.id == try_id, TryRow.status == QUEUED)
        .values(status=RUNNING, worker=worker, started_at=store_now(s))
    )
    return bool(s.execute(q).rowcount)  # type: ignore[attr-defined]


def succeed(s: Session, try_id: str, result: dict[str, Any]) -> bool:
    """Record a running try's completions (False when it timed out meanwhile)."""
    q = (
        update(TryRow)
        .where(TryRow.id == try_id, TryRow.status == RUNNING)
        .values(status=SUCCEEDED, result=result, finished_at=store_now(s))
    )
    return bool(s.execute(q).rowcount)  # type: ignore[attr-defined]


def fail(s: Session, try_id: str, code: str, message: str) -> bool:
    """Fail an unfinished try with an error code (False when it had finished already)."""
    q = (
        update(TryRow)
        .where(TryRow.id == try_id, TryRow.status.in_(UNFINISHED))
        .values(status=FAILED, error_code=code, error_message=message, finished_at=store_now(s))
    )
    return bool(s.execute(q).rowcount)  # type: ignore[attr-defined]
