"""Run one job from the store: the plain code behind the Celery task.

Like a web view: take a job id, load the job, hand it to the training code,
record what happened. Safe to call twice for the same job: a job that is not
``queued`` when we try to start it is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.db import engine_for, session
from loracle.store.models import now
from worker.errors import LeaseLost, StoreUnavailable
from worker.training import TrainingHooks

log = logging.getLogger("loracle.worker")

# How often the training loop may ask the store whether the job was cancelled (or taken
# over) at the end of a micro-batch. At the end of every optimizer step it always asks, so
# a cancel stops the run within one optimizer step: one primary-key read over a connection
# kept open, measured at 0.3 ms in a training process on 2 cores (1.3% of the benchmark
# model's 23 ms steps; a fraction of that for real models, whose steps take 100 ms and more).
# Between micro-batches of an accumulating step, at most every 50 ms.
CANCEL_POLL_SECONDS = 0.05
# Before a checkpoint or the adapter is written, ownership must be confirmed. A failed read
# (a connection dropped while idle through a long save, a store restarting) is retried on a
# fresh connection this many times, this far apart, before the run gives up.
OWNERSHIP_READS = (0.0, 0.5, 2.0, 5.0)
# How often progress and metrics reach the store: the training loop hands them over
# and goes on; a writer thread commits them in one transaction every this many seconds
# (a query per logged step cost the tiny benchmark model 7% of its speed).
PROGRESS_FLUSH_SECONDS = 0.5


def job_dir(settings: Settings, job_id: str) -> Path:
    return Path(settings.data_dir) / "jobs" / job_id


def file_path(settings: Settings, file_id: str) -> Path:
    return Path(settings.data_dir) / "files" / f"{file_id}.jsonl"


class StoreHooks(TrainingHooks):
    """Report a run's progress and events to the job store, read cancels from it, and
    keep the job's lease alive.

    Every write is fenced: it commits in one transaction with an UPDATE of the job row
    that matches only while this process holds the lease (its fencing token). Once the
    lease is lost (this process was paused past its lease and the job moved on), writes
    match no row, nothing is written, and the run is told to stop.

    Progress and metrics are queued and committed by a background thread every
    ``PROGRESS_FLUSH_SECONDS`` (and at ``close``); other events (started, warning,
    resumed, checkpoint, ...) are rare and commit at once, after whatever was queued
    before them, so the store keeps them in the order they happened. The same thread
    renews the lease every ``settings.heartbeat_s``.
    """

    def __init__(
        self,
        settings: Settings,
        job_id: str,
        token: int,
        flush_s: float = PROGRESS_FLUSH_SECONDS,
        cancel_poll_s: float = CANCEL_POLL_SECONDS,
    ) -> None:
        self.url = settings.resolved_database_url
        self.settings = settings
        self.job_id = job_id
        self.token = token
        self.flush_s = flush_s
        self.cancel_poll_s = cancel_poll_s
        self._checked = float("-inf")
        self._conn: Connection | None = None
        self._state = store.run_state_query()
        self._stop = False
        self.lost = threading.Event()
        self._done = threading.Event()
        self._queue_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._progress: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._background, name="job-store", daemon=True)
        self._thread.start()

    # -- background: flushes and heartbeats ------------------------------------------------

    def _background(self) -> None:
        next_beat = time.monotonic() + self.settings.heartbeat_s
        while not self._done.wait(min(self.flush_s, self.settings.heartbeat_s)):
            # The heartbeat first and on its own: writes that keep failing (a store error
            # on one event) must not starve it, or the lease would expire under a live run
            # and a second worker would take the job over.
            if time.monotonic() >= next_beat:
                try:
                    self._heartbeat()
                    next_beat = time.monotonic() + self.settings.heartbeat_s
                except Exception:  # retried at the next wake-up, well inside the lease
                    log.exception("heartbeat of %s failed", self.job_id)
            if self.lost.is_set():
                return
            try:
                self.flush()
            except Exception:  # a store hiccup: queued writes stay queued; try again
                log.exception("store writes of %s failed", self.job_id)
            if self.lost.is_set():
                return

    def _heartbeat(self) -> None:
        with session(self.url) as s:
            alive = store.heartbeat(s, self.job_id, self.token, self.settings.lease_ttl_s)
        if not alive:
            log.warning("job %s: lease lost; stopping without writing", self.job_id)
            self.lost.set()

    def flush(self) -> None:
        """Commit what is queued, fenced by the lease. On a store error the writes go
        back to the front of the queue for the next try, and the error is raised."""
        with self._flush_lock:  # one commit at a time, in the order things were queued
            with self._queue_lock:
                progress, events = self._progress, self._events
                self._progress, self._events = None, []
            if (progress is None and not events) or self.lost.is_set():
                return
            try:
                with session(self.url) as s:
                    # The fenced UPDATE comes first: on PostgreSQL it locks the job row, so
                    # the events below cannot land after another process took the lease.
                    values = progress or {"fencing_token": self.token}
                    if not store.update_progress(s, self.job_id, self.token, **values):
                        self.lost.set()
                        return
                    for event in events:
                        store.add_event(s, self.job_id, **event)
            except BaseException:
                with self._queue_lock:
                    self._events[:0] = events
                    if self._progress is None:
                        self._progress = progress
                raise

    def close(self) -> None:
        """Stop the background thread and commit what is still queued."""
        self._discard_connection()
        self._done.set()
        self._thread.join(timeout=30)
        try:
            self.flush()
        except Exception:
            log.exception("final store writes of %s failed", self.job_id)

    # -- the hooks ---------------------------------------------------------------------------

    def _queue(
        self, type: str, message: str, data: dict[str, Any], level: str = "info", **progress: Any
    ) -> None:
        event = {"type": type, "message": message, "data": data, "level": level}
        with self._queue_lock:
            self._events.append({**event, "created_at": now()})
            if progress:
                self._progress = progress

    def on_event(self, type: str, data: dict[str, Any]) -> None:
        if self.lost.is_set():
            return
        level = "warning" if type == "warning" else "info"
        message = str(data.get("message", "")) if isinstance(data, dict) else ""
        self._queue(type, message, data, level)
        try:
            self.flush()
        except Exception:  # a store hiccup must not fail the run: the writer retries
            log.exception("store write of %s's %s event failed; retrying", self.job_id, type)

    def on_progress(
        self,
        step: int,
        total_steps: int,
        loss: float,
        learning_rate: float,
        tokens_per_second: float,
        eta_seconds: float | None,
    ) -> None:
        if self.lost.is_set():
            return
        metrics = {
            "step": step,
            "total_steps": total_steps,
            "loss": loss,
            "tokens_per_second": tokens_per_second,
            "eta_seconds": eta_seconds,
        }
        self._queue(
            "metrics",
            f"step {step}/{total_steps} loss {loss:.4f}",
            {**metrics, "learning_rate": learning_rate},
            **metrics,
        )
        if fault_armed():
            self.flush()  # the fault must come after the step is recorded
            fault_after_progress(step)

    def _check(self) -> bool:
        """Read the job's cancel flag and lease; False when the store could not be read.

        On the training thread: at every optimizer step's end, at micro-batch ends at most
        every `cancel_poll_s`, and before every write to disk (`owns_run`). Over a
        connection the hooks keep open, with a statement compiled once: 0.3 ms a read in a
        training process on 2 cores, where a session of its own each time cost 0.8 ms."""
        self._checked = time.monotonic()
        try:
            if self._conn is None:
                self._conn = engine_for(self.url).connect()
            row = self._conn.execute(self._state, {"job_id": self.job_id}).one_or_none()
            self._conn.commit()  # ends the read: the next one sees newer writes
        except Exception:
            log.exception("job %s: cancel/lease check failed; trying again", self.job_id)
            self._discard_connection()
            return False
        cancel, owned = store.unpack_run_state(row, self.token)
        self._stop = self._stop or cancel
        if not owned:
            log.warning("job %s: lease lost; stopping without writing", self.job_id)
            self.lost.set()
        return True

    def _discard_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken; nothing more to release
                conn.close()

    def should_stop(self, step_end: bool = False) -> bool:
        if self._stop or self.lost.is_set():
            return True
        if step_end or time.monotonic() - self._checked >= self.cancel_poll_s:
            self._check()  # an unreadable store stops nothing: the next step asks again
        return self._stop or self.lost.is_set()

    def owns_run(self) -> bool:
        for pause in OWNERSHIP_READS:
            if self.lost.is_set():
                return False
            time.sleep(pause)
            if self._check():  # each retry on a fresh connection (_check drops a bad one)
                return not self.lost.is_set()
        # Fails safe: nothing is written without a confirmed lease. Not a lost lease either:
        # the run fails with the store's error, or, if the store is down for good, the lease
        # expires and the job is requeued from its last checkpoint.
        raise StoreUnavailable(
            f"job {self.job_id}: the job store could not be read to confirm this process "
            f"still owns the run ({len(OWNERSHIP_READS)} tries); nothing was written"
        )


def fault_before_lease(settings: Settings, job_id: str) -> None:
    """Fault injection for the reliability tests: ``LORACLE_FAULT_KILL_BEFORE_LEASE=1`` makes
    the process that received a job's message SIGKILL itself before taking the job's lease,
    on the first delivery of each job only: the message is gone and the job still queued.
    Unset in production."""
    if os.environ.get("LORACLE_FAULT_KILL_BEFORE_LEASE") != "1":
        return
    marker = Path(settings.data_dir) / "faults" / f"{job_id}.before-lease"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    os.kill(os.getpid(), signal.SIGKILL)


def fault_armed() -> bool:
    return "LORACLE_FAULT_KILL_AT_STEP" in os.environ


def fault_after_progress(step: int) -> None:
    """Fault injection for the reliability tests: ``LORACLE_FAULT_KILL_AT_STEP=N`` makes
    the training process kill itself with SIGKILL once step N is recorded, as an
    out-of-memory kill or a preempted machine would. Unset in production."""
    target = os.environ.get("LORACLE_FAULT_KILL_AT_STEP")
    if target and step >= int(target):
        os.kill(os.getpid(), signal.SIGKILL)


def build_plan(settings: Settings, job: Any) -> Any:
    """The TrainingPlan of a stored job: everything comes from the store."""
    from worker.modeling import resolve_model_source
    from worker.plan import load_plan

    model = resolve_model_source(job.model, settings.allowed_model_roots)
    plan: dict[str, Any] = {
        **job.hyperparameters,
        "model": model,
        "train_file": str(file_path(settings, job.training_file)),
        "output_dir": str(job_dir(settings, job.id)),
        "variant": job.variant,
        "combine_with": list(job.combine_with),
    }
    if job.validation_file:
        plan["validation_file"] = str(file_path(settings, job.validation_file))
    if job.estimate:
        plan["estimate"] = job.estimate
    return load_plan(plan)


def record_token_stats(settings: Settings, job: Any, plan: Any, hooks: StoreHooks) -> None:
    """Token lengths (min, median, max, before truncation) of the job's files under this
    model's tokenizer, stored on each file once per model and reported as an event."""
    from transformers import AutoTokenizer

    from loracle.store.models import FileRow
    from worker.data import token_length_stats

    files = [(job.training_file, plan.train_file), (job.validation_file, plan.validation_file)]
    tokenizer = None
    for file_id, path in files:
        if not file_id or path is None:
            continue
        with session(settings.resolved_database_url) as s:
            row = s.get(FileRow, s.scalar(select(FileRow.pk).where(FileRow.id == file_id)))
            known = dict(row.token_stats or {}) if row else {}
        if job.model in known:
            stats = known[job.model]
        else:
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(plan.model, trust_remote_code=False)
            stats = token_length_stats(path, tokenizer)
            with session(settings.resolved_database_url) as s:
                row = s.scalars(select(FileRow).where(FileRow.id == file_id)).one()
                row.token_stats = {**(row.token_stats or {}), job.model: stats}
        over = (
            f"; max {stats['max']:.0f} > seq_len {plan.seq_len}: long rows are cut"
            if (stats["max"] > plan.seq_len)
            else ""
        )
        hooks.on_event(
            "data",
            {
                "message": f"{file_id}: tokens per row min {stats['min']:.0f}, median "
                f"{stats['median']:.0f}, max {stats['max']:.0f}{over}",
                "file": file_id,
                "token_stats": stats,
            },
        )


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_job(job_id: str, settings: Settings) -> str:
    """Run a job to its end if this process can take its lease; returns the job's
    status as this process leaves it. Safe to call for any delivery of any job."""
    url = settings.resolved_database_url
    fault_before_lease(settings, job_id)
    with session(url) as s:
        job = store.get_job(s, job_id, any_owner=True)
        if job is None:
            log.warning("job %s is not in the store; message dropped", job_id)
            return "missing"
        token = store.acquire(s, job_id, worker_name(), settings.lease_ttl_s, settings.max_attempts)
        if token is None:
            s.refresh(job)
            if job.status == store.QUEUED and job.cancel_requested_at is not None:
                store._transition(
                    s, job_id, [store.QUEUED], store.CANCELLED, "cancelled before it started"
                )
                return store.CANCELLED
            if job.status == store.RUNNING:
                # A second delivery while another process holds a live lease
                # (Redis redelivers after its visibility timeout): never train twice.
                # Or the lease expired and the job has used its attempts: the dispatcher's
                # reaper fails it; this delivery must not start it again either.
                expired = job.lease_expires_at is not None and (
                    job.lease_expires_at < store.store_now(s)
                )
                if not expired:
                    why = f"{job.lease_owner} holds its lease"
                elif job.cancel_requested_at is not None:
                    why = (
                        f"its lease (held by {job.lease_owner}) expired with a cancel "
                        "pending; the dispatcher cancels it"
                    )
                else:
                    why = (
                        f"its lease (held by {job.lease_owner}) expired and it has used its "
                        f"{job.attempts} of {settings.max_attempts} attempts; the dispatcher "
                        "ends it"
                    )
                store.add_event(
                    s,
                    job_id,
                    "duplicate_delivery",
                    f"{worker_name()} received the job while {why}; this delivery exits "
                    "without training",
                    {"receiver": worker_name(), "lease_owner": job.lease_owner},
                )
            log.info("job %s is %s; nothing to do", job_id, job.status)
            return job.status

    hooks = StoreHooks(settings, job_id, token)
    try:
        from worker.training import run_training

        plan = build_plan(settings, job)
        with session(url) as s:
            store.update_progress(s, job_id, token, plan=plan.model_dump(mode="json"))
        record_token_stats(settings, job, plan, hooks)
        result = run_training(plan, hooks, resume=True)
    except LeaseLost as exc:  # another process owns the job now: it records the outcome
        log.warning("job %s: %s", job_id, exc)
        return "lease-lost"
    except Exception as exc:  # the job fails; the worker goes on to the next one
        log.exception("job %s failed", job_id)
        message = str(exc) or exc.__class__.__name__
        with session(url) as s:
            status = store.finish(
                s,
                job_id,
                token,
                store.FAILED,
                f"failed: {message}",
                error_type=exc.__class__.__name__,
                error_message=message,
            )
        return status or "lease-lost"
    finally:
        hooks.close()

    if hooks.lost.is_set():
        return "lease-lost"
    values = {
        "step": result.steps,
        "total_steps": result.total_steps,
        "loss": result.final_loss,
        "tokens_per_second": result.tokens_per_second,
        "eta_seconds": 0.0,
        "measured_peak": result.peak_memory.model_dump(mode="json"),
    }
    with session(url) as s:
        if result.status == "cancelled":
            status = store.finish(
                s, job_id, token, store.CANCELLED, "cancelled while running", **values
            )
        else:
            status = store.finish(s, job_id, token, store.SUCCEEDED, "training finished", **values)
    return status or "lease-lost"
