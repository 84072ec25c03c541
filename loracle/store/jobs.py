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

from loracle.store import webhooks
from loracle.store.models import EventRow, FileRow, JobRow, now

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
# Paused: checkpointed and off its card, until it is resumed (queued again).
PAUSED = "paused"
STATUSES = (QUEUED, RUNNING, PAUSED, SUCCEEDED, FAILED, CANCELLED)
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
    """A file of `owner` that was not deleted."""
    return s.scalar(
        select(FileRow).where(
            FileRow.id == file_id, FileRow.owner == owner, FileRow.deleted_at.is_(None)
        )
    )


def list_files(
    s: Session,
    owner: str | None,
    limit: int,
    after: str | None = None,
    purpose: str | None = None,
) -> tuple[list[FileRow], bool] | None:
    """Newest first, `limit` of them after the file `after` (None when `after` is not one
    of the owner's files), and whether there are more."""
    where = [FileRow.owner == owner, FileRow.deleted_at.is_(None)]
    if purpose is not None:
        where.append(FileRow.purpose == purpose)
    if after is not None:
        cursor = s.scalar(select(FileRow.pk).where(FileRow.id == after, FileRow.owner == owner))
        if cursor is None:
            return None
        where.append(FileRow.pk < cursor)
    rows = list(
        s.scalars(select(FileRow).where(*where).order_by(FileRow.pk.desc()).limit(limit + 1))
    )
    return rows[:limit], len(rows) > limit


def jobs_using_file(s: Session, file_id: str) -> list[str]:
    """Queued or running jobs that will read the file."""
    query = select(JobRow.id).where(
        or_(JobRow.training_file == file_id, JobRow.validation_file == file_id),
        JobRow.status.in_([QUEUED, RUNNING]),
    )
    return list(s.scalars(query))


def delete_file(s: Session, row: FileRow) -> None:
    row.deleted_at = now()
    s.flush()


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
    if type == "status" and data and data.get("status") in webhooks.JOB_EVENTS:
        # The outbox, in the transaction of the status change.
        webhooks.enqueue_for_job(s, job_id, str(data["status"]))
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


def transition(
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


def retry_elsewhere(
    s: Session, job_id: str, token: int, max_attempts: int, error_type: str, message: str
) -> str | None:
    """End this attempt of a running job for a fault of the worker's surroundings (not the
    job's own): back to the queue, unsent, for the dispatcher to send again (to whichever
    worker of its queue takes it), or failed with `error_type` when it has used its
    attempts, or cancelled when a cancel is pending. For the holder of `token` only; returns
    the new status, or None when the lease was lost."""
    row = s.execute(
        select(JobRow.attempts, JobRow.cancel_requested_at).where(_owned(job_id, token))
    ).one_or_none()
    if row is None:
        return None
    attempts, cancel_at = row
    stamp = now()
    values: dict[str, Any]
    if cancel_at is not None:
        values = {"status": CANCELLED, "finished_at": stamp}
        text, kind = f"cancelled after its attempt ended: {message}", "status"
    elif attempts >= max_attempts:
        values = {
            "status": FAILED,
            "finished_at": stamp,
            "error_type": error_type,
            "error_message": message,
        }
        text = f"failed: {message} (attempt {attempts} of max_attempts={max_attempts})"
        kind = "status"
    else:
        values = {"status": QUEUED, "enqueued_at": None}
        text = f"{error_type}: {message}; requeued for attempt {attempts + 1} of {max_attempts}"
        kind = "requeued"
    result = s.execute(
        update(JobRow)
        .where(_owned(job_id, token))
        .values(lease_owner=None, lease_expires_at=None, **values)
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):
        return None
    data = {"status": values["status"], "error_type": error_type, "error_message": message}
    add_event(s, job_id, kind, text, data, "warning")
    return str(values["status"])


def release(
    s: Session,
    job_id: str,
    token: int,
    message: str,
    data: dict[str, Any] | None = None,
    level: str = "info",
) -> bool:
    """running -> queued at once, for the holder of ``token`` that stops for its worker's
    shutdown (worker/shutdown.py): the lease is released, so the next worker takes the job
    without waiting for it to expire; the job is unmarked as sent, so the dispatcher sends it
    again; and the attempt is given back, since a shutdown is no failure of the job (a job
    stopped by every restart would otherwise run out of attempts and stay queued for good).
    Not while a cancel is pending: the caller ends the job cancelled. Records a ``requeued``
    event. True when released."""
    result = s.execute(
        update(JobRow)
        .where(_owned(job_id, token), JobRow.cancel_requested_at.is_(None))
        .values(
            status=QUEUED,
            lease_owner=None,
            lease_expires_at=None,
            enqueued_at=None,
            attempts=JobRow.attempts - 1,
        )
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):
        return False
    add_event(s, job_id, "requeued", message, {"status": QUEUED, **(data or {})}, level)
    return True


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
    if transition(
        s,
        job.id,
        [QUEUED, PAUSED],
        CANCELLED,
        "cancelled before it started" if job.status == QUEUED else "cancelled while paused",
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
    `unpack_run_state` and `pause_of` read its row."""
    return select(
        JobRow.cancel_requested_at,
        JobRow.status,
        JobRow.fencing_token,
        JobRow.pause_requested_at,
    ).where(JobRow.id == bindparam("job_id"))


def unpack_run_state(row: Any, token: int) -> tuple[bool, bool]:
    """(cancel requested, lease still held with ``token``) from a `run_state_query` row."""
    if row is None:
        return False, False
    cancel_at, status, fencing_token, _ = row
    return cancel_at is not None, status == RUNNING and fencing_token == token


def pause_of(row: Any) -> bool:
    """Whether a pause was asked for, from a `run_state_query` row."""
    return row is not None and row[3] is not None


def request_pause(s: Session, job: JobRow) -> str:
    """Pause a job: a queued one is paused now; a running one is flagged, and its training
    loop checkpoints at the end of the current optimizer step, leaves its card and ends
    `paused` (`pause_stopped`). Returns the status after."""
    stamp = now()
    if transition(s, job.id, [QUEUED], PAUSED, "paused before it started", enqueued_at=None):
        return PAUSED
    result = s.execute(
        update(JobRow)
        .where(
            JobRow.id == job.id,
            JobRow.status == RUNNING,
            JobRow.cancel_requested_at.is_(None),
            JobRow.pause_requested_at.is_(None),
        )
        .values(pause_requested_at=stamp)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0):
        add_event(s, job.id, "pause_requested", "pause requested; checkpointing at the next step")
        return RUNNING
    s.refresh(job)
    return job.status


def pause_stopped(s: Session, job_id: str, token: int, message: str, data: dict[str, Any]) -> bool:
    """running -> paused, for the holder of ``token`` that stopped at a checkpoint because a
    pause was asked for: the lease is released and the attempt given back, as at a shutdown
    (`release`). Not while a cancel is pending. True when paused."""
    result = s.execute(
        update(JobRow)
        .where(_owned(job_id, token), JobRow.cancel_requested_at.is_(None))
        .values(
            status=PAUSED,
            lease_owner=None,
            lease_expires_at=None,
            enqueued_at=None,
            pause_requested_at=None,
            attempts=JobRow.attempts - 1,
        )
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):
        return False
    add_event(s, job_id, "status", message, {"status": PAUSED, **data})
    return True


def resume(s: Session, job: JobRow) -> bool:
    """paused -> queued, marked as being sent (the caller sends it, as at submission; a
    failed send clears the mark and the dispatcher sends it): its worker resumes from the
    checkpoint the pause wrote."""
    return transition(
        s,
        job.id,
        [PAUSED],
        QUEUED,
        "resumed: queued again, to continue from its last checkpoint",
        enqueued_at=now(),
        pause_requested_at=None,
    )


def update_progress(s: Session, job_id: str, token: int, **values: Any) -> bool:
    """Progress of a running job, written only by the holder of its lease."""
    result = s.execute(
        update(JobRow)
        .where(_owned(job_id, token))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


# -- sending to the broker ------------------------------------------------------------------
# `enqueued_at` marks a queued job whose message was handed to the broker (loracle.dispatch).


def mark_sent(s: Session, job_id: str) -> None:
    s.execute(update(JobRow).where(JobRow.id == job_id).values(enqueued_at=now()))


def unmark_sent(s: Session, job_id: str, sent_before: datetime | None = None) -> bool:
    """Clear a queued job's sent mark (only when it was set before ``sent_before``, if
    given), so the dispatcher sends it again. True when a mark was cleared."""
    where = [JobRow.id == job_id, JobRow.status == QUEUED]
    if sent_before is not None:
        where.append(JobRow.enqueued_at < sent_before)
    result = s.execute(
        update(JobRow)
        .where(*where)
        .values(enqueued_at=None)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def unmark_all_sent(s: Session) -> None:
    """Every queued job to be sent again (the broker lost its messages)."""
    s.execute(update(JobRow).where(JobRow.status == QUEUED).values(enqueued_at=None))


def queued_sent_before(s: Session, cutoff: datetime) -> list[str]:
    return list(
        s.scalars(select(JobRow.id).where(JobRow.status == QUEUED, JobRow.enqueued_at < cutoff))
    )


def unsent_queued(s: Session, limit: int) -> list[str]:
    """Queued jobs placed on a queue but not handed to the broker, oldest first."""
    return list(
        s.scalars(
            select(JobRow.id)
            .where(JobRow.status == QUEUED, JobRow.enqueued_at.is_(None), JobRow.queue.isnot(None))
            .order_by(JobRow.pk)
            .limit(limit)
        )
    )


def has_event(s: Session, job_id: str, type: str) -> bool:
    return (
        s.scalar(select(EventRow.pk).where(EventRow.job_id == job_id, EventRow.type == type))
        is not None
    )


# -- data files' token statistics -------------------------------------------------------------


def file_token_stats(s: Session, file_id: str) -> dict[str, Any]:
    """The token statistics a file has recorded, by model."""
    stats = s.scalar(select(FileRow.token_stats).where(FileRow.id == file_id))
    return dict(stats or {})


def record_token_stats(s: Session, file_id: str, model: str, stats: dict[str, float]) -> None:
    row = s.scalars(select(FileRow).where(FileRow.id == file_id)).one()
    row.token_stats = {**(row.token_stats or {}), model: stats}


# -- placement -----------------------------------------------------------------------------


def job_queue(s: Session, job_id: str) -> str | None:
    """The broker queue a job is placed on; None while it waits for a fitting worker."""
    return s.scalar(select(JobRow.queue).where(JobRow.id == job_id))


def waiting_for_placement(s: Session, limit: int = 100) -> list[tuple[str, dict[str, Any] | None]]:
    """Queued jobs without a queue (waiting for a fitting worker), oldest first, with their
    stored placement."""
    rows = s.execute(
        select(JobRow.id, JobRow.placement)
        .where(JobRow.status == QUEUED, JobRow.queue.is_(None))
        .order_by(JobRow.pk)
        .limit(limit)
    )
    return [(job_id, stored) for job_id, stored in rows]


def set_placement(s: Session, job_id: str, record: dict[str, Any]) -> bool:
    """Place a waiting job (it is sent at the dispatcher's next send); False when it was
    placed, started or ended meanwhile."""
    result = s.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == QUEUED, JobRow.queue.is_(None))
        .values(placement=record, queue=record["queue"], enqueued_at=None)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def running_jobs(s: Session) -> list[tuple[str, str | None]]:
    """(job id, host:pid of the process training it) of every running job."""
    query = select(JobRow.id, JobRow.worker).where(JobRow.status == RUNNING).order_by(JobRow.pk)
    return [(job_id, worker) for job_id, worker in s.execute(query)]


def measured_jobs(s: Session, limit: int = 10_000) -> list[Any]:
    """The latest succeeded jobs with the columns calibration reads (loracle.calibration):
    id, model, variant, combine_with, estimate, measured_peak."""
    query = (
        select(
            JobRow.id,
            JobRow.model,
            JobRow.variant,
            JobRow.combine_with,
            JobRow.estimate,
            JobRow.measured_peak,
        )
        .where(JobRow.status == SUCCEEDED)
        .order_by(JobRow.pk.desc())
        .limit(limit)
    )
    return list(s.execute(query))


RESULTS_PURPOSE = "fine-tune-results"


def add_result_file(
    s: Session, job_id: str, name: str, size: int, sha256: str, owner: str | None
) -> str:
    """A file row for one of a job's result artifacts (OpenAI's `result_files`): its path is
    `<job id>/<artifact name>`, which the API serves from the job's artifacts. Returns the
    file id."""
    file_id = new_id("file")
    add_file(
        s,
        id=file_id,
        owner=owner,
        filename=name,
        purpose=RESULTS_PURPOSE,
        bytes=size,
        rows=0,
        format="json",
        sha256=sha256,
        path=f"{job_id}/{name}",
    )
    return file_id


def events_of_type(s: Session, job_id: str, types: list[str]) -> list[EventRow]:
    """A job's events of these types, oldest first."""
    query = (
        select(EventRow)
        .where(EventRow.job_id == job_id, EventRow.type.in_(types))
        .order_by(EventRow.pk)
    )
    return list(s.scalars(query))


# -- merges ---------------------------------------------------------------------------------
# A merge of a succeeded job's adapter into its base is recorded as the job's events, in this
# order: `merge_requested` (the API; data: into_model_root, dtype), `merge_started` (the
# worker), then `merged` (data: path, bytes, files, dtype, model_root_path...) or
# `merge_failed` (data: error code, message). The newest of them is the merge's state.
MERGE_REQUESTED, MERGE_STARTED, MERGED, MERGE_FAILED = (
    "merge_requested",
    "merge_started",
    "merged",
    "merge_failed",
)
MERGE_EVENTS = [MERGE_REQUESTED, MERGE_STARTED, MERGED, MERGE_FAILED]
MERGE_STATUS = {
    MERGE_REQUESTED: "queued",
    MERGE_STARTED: "running",
    MERGED: "succeeded",
    MERGE_FAILED: "failed",
}


def latest_merge_events(s: Session, job_id: str) -> list[EventRow]:
    """The events of the job's newest merge, from its `merge_requested` on (oldest first);
    empty when no merge was ever asked for."""
    rows = events_of_type(s, job_id, MERGE_EVENTS)
    starts = [i for i, row in enumerate(rows) if row.type == MERGE_REQUESTED]
    return rows[starts[-1] :] if starts else []
