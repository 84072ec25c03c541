"""Reading and changing files, jobs and events in the store.

Every status change is one conditional UPDATE (``WHERE status IN (...)``), so
two processes racing on a job (the API cancelling, a worker finishing) cannot
both win: the loser's update matches no row and it re-reads what happened.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
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
) -> EventRow:
    row = EventRow(job_id=job_id, type=type, message=message, data=data or {}, level=level)
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


def start(s: Session, job_id: str, worker: str) -> bool:
    """queued -> running, unless a cancel came first (then queued -> cancelled)."""
    started = bool(
        getattr(
            s.execute(
                update(JobRow)
                .where(
                    JobRow.id == job_id,
                    JobRow.status == QUEUED,
                    JobRow.cancel_requested_at.is_(None),
                )
                .values(
                    status=RUNNING,
                    started_at=now(),
                    attempts=JobRow.attempts + 1,
                    worker=worker,
                )
                .execution_options(synchronize_session=False)
            ),
            "rowcount",
            0,
        )
    )
    if started:
        add_event(s, job_id, "status", f"job running on {worker}", {"status": RUNNING})
    return started


def finish(s: Session, job_id: str, status: str, message: str = "", **values: Any) -> bool:
    """running -> a terminal status. False when the job was no longer running."""
    assert status in TERMINAL
    return _transition(s, job_id, [RUNNING], status, message, finished_at=now(), **values)


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


def cancel_requested(s: Session, job_id: str) -> bool:
    stamp: datetime | None = s.scalar(select(JobRow.cancel_requested_at).where(JobRow.id == job_id))
    return stamp is not None


def update_progress(s: Session, job_id: str, **values: Any) -> None:
    s.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == RUNNING)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
