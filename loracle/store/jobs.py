"""Reading and changing files, jobs and events in the store.

Every status change is one conditional UPDATE (``WHERE status IN (...)``), so
two processes racing on a job (the API cancelling, a worker finishing) cannot
both win: the loser's update matches no row and it re-reads what happened.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from loracle.store.models import EventRow, FileRow, JobRow, now

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def store_now(s: Session) -> datetime:
    """The time by the store's clock, for lease times. Workers, the API and its dispatcher
    may run on different hosts; a lease stamped by one host's clock and judged by another's
    expires early (or late) by their skew, and a worker whose clock runs 60 s behind would
    see each of its live leases reaped. PostgreSQL's ``clock_timestamp()`` is one clock for
    all of them (``now()`` would be the transaction's start). SQLite is a file on one host:
    every process that opens it shares that host's clock already."""
    if s.get_bind().dialect.name == "postgresql":
        stamp = s.scalar(select(func.clock_timestamp()))
        assert isinstance(stamp, datetime)
        return stamp
    return now()


# -- files ----------------------------------------------------------------------------


def add_file(s: Session, **fields: Any) -> FileRow:
    row = FileRow(**fields)
    s.add(row)
    s.flush()
    return row


def get_file(s: Session, file_id: str, owner: str | None) -> FileRow | None:
    return s.scalar(select(FileRow).where(FileRow.id == file_id, FileRow.owner == owner))


def list_files(s: Session, owner: str | None, limit: int) -> list[FileRow]:
    q = select(FileRow).where(FileRow.owner == owner).order_by(FileRow.pk.desc()).limit(limit)
    return list(s.scalars(q))


# -- jobs -----------------------------------------------------------------------------


def add_job(s: Session, **fields: Any) -> JobRow:
    row = JobRow(status=QUEUED, **fields)
    s.add(row)
    s.flush()
    add_event(s, row.id, "status", "job created and queued", {"status": QUEUED})
    return row


def get_job(
    s: Session, job_id: str, owner: str | None = None, any_owner: bool = False
) -> JobRow | None:
    q = select(JobRow).where(JobRow.id == job_id)
    if not any_owner:
        q = q.where(JobRow.owner == owner)
    return s.scalar(q)


def list_jobs(
    s: Session, owner: str | None, limit: int, after: str | None, status: str | None
) -> tuple[list[JobRow], bool] | None:
    """Newest first. ``after`` is the id of the last job of the previous page;
    None when that id is unknown."""
    q = select(JobRow).where(JobRow.owner == owner)
    if after is not None:
        anchor = s.scalar(select(JobRow.pk).where(JobRow.id == after, JobRow.owner == owner))
        if anchor is None:
            return None
        q = q.where(JobRow.pk < anchor)
    if status is not None:
        q = q.where(JobRow.status == status)
    rows = list(s.scalars(q.order_by(JobRow.pk.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def add_event(
    s: Session,
    job_id: str,
    type: str,
    message: str = "",
    data: dict[str, Any] | None = None,
    level: str = "info",
    created_at: datetime | None = None,
) -> EventRow:
    """Add an event; ``created_at`` is when it happened (default: now), for writers
    that commit events some time after they happen."""
    row = EventRow(
        job_id=job_id,
        type=type,
        message=message,
        data=data or {},
        level=level,
        created_at=created_at or now(),
    )
    s.add(row)
    s.flush()
    return row


def list_events(
    s: Session, job_id: str, limit: int, after: int | None
) -> tuple[list[EventRow], bool]:
    q = select(EventRow).where(EventRow.job_id == job_id)
    if after is not None:
        q = q.where(EventRow.pk > after)
    rows = list(s.scalars(q.order_by(EventRow.pk).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _transition(
    s: Session, job_id: str, from_: Iterable[str], to: str, message: str = "", **values: Any
) -> bool:
    result = s.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status.in_(list(from_)))
        .values(status=to, **values)
        .execution_options(synchronize_session=False)
    )
    changed = bool(getattr(result, "rowcount", 0))
    if changed:
        add_event(s, job_id, "status", message or f"job {to}", {"status": to})
    return changed


def acquire(s: Session, job_id: str, worker: str, ttl_s: float, max_attempts: int) -> int | None:
    """Take the job's lease: queued -> running, or running with an expired lease (its
    worker stopped heart-beating) -> running here. Returns the new fencing token, or
    None when the job is not ours to run (finished, cancelled, leased by a live
    worker, or out of attempts: the reaper fails those)."""
    stamp = store_now(s)
    claimable = or_(
        JobRow.status == QUEUED,
        and_(JobRow.status == RUNNING, JobRow.lease_expires_at < stamp),
    )
    result = s.execute(
        update(JobRow)
        .where(
            JobRow.id == job_id,
            claimable,
            JobRow.cancel_requested_at.is_(None),
            JobRow.attempts < max_attempts,
        )
        .values(
            status=RUNNING,
            started_at=func.coalesce(JobRow.started_at, stamp),
            attempts=JobRow.attempts + 1,
            worker=worker,
            lease_owner=worker,
            lease_expires_at=stamp + timedelta(seconds=ttl_s),
            fencing_token=JobRow.fencing_token + 1,
        )
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):
        return None
    token, attempts = s.execute(
        select(JobRow.fencing_token, JobRow.attempts).where(JobRow.id == job_id)
    ).one()
    add_event(
        s,
        job_id,
        "status",
        f"job running on {worker} (attempt {attempts})",
        {"status": RUNNING, "attempt": attempts, "worker": worker, "fencing_token": token},
    )
    return int(token)


def heartbeat(s: Session, job_id: str, token: int, ttl_s: float) -> bool:
    """Renew the lease. False when it is no longer ours: stop and write nothing."""
    result = s.execute(
        update(JobRow)
        .where(_owned(job_id, token))
        .values(lease_expires_at=store_now(s) + timedelta(seconds=ttl_s))
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def _owned(job_id: str, token: int) -> Any:
    return and_(JobRow.id == job_id, JobRow.status == RUNNING, JobRow.fencing_token == token)


def finish(
    s: Session, job_id: str, token: int, status: str, message: str = "", **values: Any
) -> str | None:
    """running -> a terminal status, for the holder of ``token`` only. Returns the
    status recorded, or None when the lease was lost (another process owns the job).

    A success that arrives after a cancel was accepted ends ``cancelled``: the cancel
    came first, and ``cancel_outcome`` says the run had finished anyway."""
    assert status in TERMINAL
    stamp = now()
    where = _owned(job_id, token)
    if status == SUCCEEDED:
        where = and_(where, JobRow.cancel_requested_at.is_(None))
    result = s.execute(
        update(JobRow)
        .where(where)
        .values(status=status, finished_at=stamp, lease_expires_at=None, **values)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0):
        add_event(s, job_id, "status", message or f"job {status}", {"status": status})
        return status
    if status != SUCCEEDED:
        return None
    accepted = s.scalar(select(JobRow.cancel_requested_at).where(_owned(job_id, token)))
    if accepted is None:
        return None
    outcome = (
        f"cancel accepted at {accepted.isoformat()} before the run finished; the run "
        "completed its last step anyway and its adapter is kept, but the job is cancelled"
    )
    result = s.execute(
        update(JobRow)
        .where(_owned(job_id, token))
        .values(
            status=CANCELLED,
            finished_at=stamp,
            lease_expires_at=None,
            cancel_outcome=outcome,
            **values,
        )
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):
        return None
    add_event(s, job_id, "status", outcome, {"status": CANCELLED, "late_success": True})
    return CANCELLED


def reap(s: Session, max_attempts: int) -> list[tuple[str, str]]:
    """Jobs whose worker stopped heart-beating: back to the queue, failed when they
    have used their attempts, or cancelled when a cancel is pending. Returns
    (job id, new status) pairs."""
    stamp = store_now(s)
    expired = list(
        s.execute(
            select(JobRow.id, JobRow.attempts, JobRow.cancel_requested_at, JobRow.lease_owner)
            .where(JobRow.status == RUNNING, JobRow.lease_expires_at < stamp)
            .limit(100)
        )
    )
    done = []
    for job_id, attempts, cancel_at, owner in expired:
        values: dict[str, Any]
        if cancel_at is not None:
            values = {"status": CANCELLED, "finished_at": stamp}
            message, kind = f"worker {owner} stopped while a cancel was pending", "status"
        elif attempts >= max_attempts:
            message = (
                f"the worker stopped during each of {attempts} attempts (the last on "
                f"{owner}); giving up after max_attempts={max_attempts}"
            )
            values = {
                "status": FAILED,
                "finished_at": stamp,
                "error_type": "WorkerLost",
                "error_message": message,
            }
            kind = "status"
        else:
            values = {"status": QUEUED, "enqueued_at": None}
            message = (
                f"worker {owner} stopped heart-beating; requeued for attempt {attempts + 1} "
                f"of {max_attempts}"
            )
            kind = "requeued"
        result = s.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.status == RUNNING, JobRow.lease_expires_at < stamp)
            .values(lease_owner=None, lease_expires_at=None, **values)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0):
            add_event(s, job_id, kind, message, {"status": values["status"]}, "warning")
            done.append((job_id, str(values["status"])))
    return done


def request_cancel(s: Session, job: JobRow) -> str:
    """Cancel a job: a queued one ends now, a running one is flagged and its
    training loop stops at the next optimizer step. Returns the status after."""
    stamp = now()
    if _transition(
        s,
        job.id,
        [QUEUED],
        CANCELLED,
        "cancelled before it started",
        finished_at=stamp,
        cancel_requested_at=stamp,
    ):
        return CANCELLED
    result = s.execute(
        update(JobRow)
        .where(JobRow.id == job.id, JobRow.status == RUNNING, JobRow.cancel_requested_at.is_(None))
        .values(cancel_requested_at=stamp)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0):
        add_event(s, job.id, "cancel_requested", "cancel requested; stopping at the next step")
        return RUNNING
    s.refresh(job)
    return job.status


def run_state_query() -> Any:
    """The primary-key read a training loop makes at each optimizer step (bind ``job_id``);
    `unpack_run_state` reads its row."""
    return select(JobRow.cancel_requested_at, JobRow.status, JobRow.fencing_token).where(
        JobRow.id == bindparam("job_id")
    )


def unpack_run_state(row: Any, token: int) -> tuple[bool, bool]:
    """(cancel requested, lease still held with ``token``) from a `run_state_query` row."""
    if row is None:
        return False, False
    cancel_at, status, fencing_token = row
    return cancel_at is not None, status == RUNNING and fencing_token == token


def update_progress(s: Session, job_id: str, token: int, **values: Any) -> bool:
    """Progress of a running job, written only by the holder of its lease."""
    result = s.execute(
        update(JobRow)
        .where(_owned(job_id, token))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))
