"""Run one job from the store: the plain code behind the Celery task.

Like a web view: take a job id, load the job, hand it to the training code,
record what happened. Safe to call twice for the same job: a job that is not
``queued`` when we try to start it is left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from loracle import jobfiles
from loracle.errors import FileStoreUnreachable
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.db import engine_for, session
from loracle.store.models import now
from worker import faults, messages, shutdown
from worker.cancelled import outcome
from worker.errors import LeaseLost, OutOfMemory, SourceCheckpointGone, StoreUnavailable
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
# Events stored at level "warning": a run's warnings, and what running out of memory did.
WARNING_EVENTS = frozenset({"warning", "oom_retry", "out_of_memory"})


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
        self.pause = False
        self.shutdown: str | None = None  # the signal that asked the worker to stop
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
        level = "warning" if type in WARNING_EVENTS else "info"
        message = messages.describe(type, data) if isinstance(data, dict) else type
        # What the run runs on is the job's from its start (its peaks are added at its end).
        ran_on = data.get("run") if type == "started" and isinstance(data, dict) else None
        self._queue(type, message, data, level, **({"measured_peak": ran_on} if ran_on else {}))
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
        faults.step_delay()
        if faults.step_kill_armed():
            self.flush()  # the fault must come after the step is recorded
            faults.after_step_recorded(step)

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
        self.pause = self.pause or store.pause_of(row)
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
        if step_end and self.shutdown is None:  # a shutdown stops at a step end, see below
            self.shutdown = shutdown.requested()
        # A pause, like a shutdown, stops at a step end only: there it can be checkpointed.
        paused = self.pause and step_end
        if self._stop or self.lost.is_set() or self.shutdown or paused:
            return True
        if step_end or time.monotonic() - self._checked >= self.cancel_poll_s:
            self._check()  # an unreadable store stops nothing: the next step asks again
        return self._stop or self.lost.is_set() or (self.pause and step_end)

    def checkpoint_on_stop(self) -> bool:
        """A stop for the worker's shutdown or for a pause checkpoints its step, and the job
        is requeued or paused (worker/shutdown.py, `pause`); a cancel or a lost lease does
        not."""
        wanted = bool(self.shutdown) or self.pause
        return wanted and not self._stop and not self.lost.is_set()

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


def build_plan(settings: Settings, job: Any, data_file: Callable[[str], Path] | None = None) -> Any:
    """The TrainingPlan of a stored job: everything comes from the store. `data_file` maps a
    file id to a local path (default: the shared data directory's; see worker/transport.py)."""
    from loracle.model_source import resolve_model_source
    from loracle.plan import load_plan

    data_file = data_file or (lambda file_id: file_path(settings, file_id))
    model = resolve_model_source(job.model, settings.allowed_model_roots)
    plan: dict[str, Any] = {
        **job.hyperparameters,
        "model": model,
        "train_file": str(data_file(job.training_file)),
        "output_dir": str(job_dir(settings, job.id)),
        "variant": job.variant,
        "combine_with": list(job.combine_with),
    }
    if job.validation_file:
        plan["validation_file"] = str(data_file(job.validation_file))
    if job.estimate:
        plan["estimate"] = job.estimate
    return load_plan(plan)


def start_from_source(settings: Settings, job: Any, hooks: StoreHooks) -> bool:
    """A job submitted `from_checkpoint` another job's checkpoint starts from a copy of it
    in its own checkpoints folder, the first time it runs (later runs resume from their own
    checkpoints). The copy is made under a temporary name and renamed: whole or absent.
    True when this run starts from the copy."""
    cid = (job.method or {}).get("from_checkpoint")
    if not cid:
        return False
    own = job_dir(settings, job.id) / jobfiles.CHECKPOINTS_DIRNAME
    if own.is_dir() and any(jobfiles.is_complete(p) for p in own.iterdir()):
        return False
    _, hex_id, step = cid.split("-")
    source = jobfiles.checkpoint_dir(settings.data_dir, f"job-{hex_id}", int(step))
    if not jobfiles.is_complete(source):
        raise SourceCheckpointGone(f"from_checkpoint {cid}: the checkpoint is gone ({source})")
    target = own / source.name
    tmp = own / f".{source.name}.copying"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    hooks.on_event(
        "from_checkpoint",
        {"checkpoint": cid, "step": int(step), "message": f"starts from {cid} (step {step})"},
    )
    return True


def record_token_stats(settings: Settings, job: Any, plan: Any, hooks: StoreHooks) -> None:
    """Token lengths (min, median, max, before truncation) of the job's files under this
    model's tokenizer, stored on each file once per model and reported as an event."""
    from transformers import AutoTokenizer

    from worker.data import token_length_stats

    files = [(job.training_file, plan.train_file), (job.validation_file, plan.validation_file)]
    tokenizer = None
    for file_id, path in files:
        if not file_id or path is None:
            continue
        with session(settings.resolved_database_url) as s:
            known = store.file_token_stats(s, file_id)
        if job.model in known:
            stats = known[job.model]
        else:
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(plan.model, trust_remote_code=False)
            stats = token_length_stats(path, tokenizer)
            with session(settings.resolved_database_url) as s:
                store.record_token_stats(s, file_id, job.model, stats)
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


def _room_for(settings: Settings, s: Any, job: Any) -> bool:
    """On arrival: does this card still have the memory the job was placed for? Another
    process may have taken some since the job was placed. If not, the job is handed back
    (queued and unsent, without using an attempt): the dispatcher sends it again, to any
    worker of its class, rather than let it run out of memory here. Either way an event says
    which worker and card class received it, with the free memory it saw."""
    from worker import fleet

    needs = (job.placement or {}).get("estimate_gib")
    free = fleet.free_gib_here(settings)
    arrival = {
        "worker_id": os.environ.get("LORACLE_WORKER_ID"),
        "card_class": os.environ.get("LORACLE_WORKER_CARD_CLASS"),
        "free_gib": free,
        "needs_gib": needs,
    }
    if not needs or free >= needs:
        store.add_event(
            s,
            job.id,
            "arrived",
            f"received by {arrival['worker_id']} ({free:.1f} GiB free)",
            arrival,
        )
        return True
    message = (
        f"{worker_name()} has {free:.1f} GiB free, less than the {needs:.1f} GiB the job was "
        "placed for (another process took memory since); handed back to its queue"
    )
    log.warning("job %s: %s", job.id, message)
    store.unmark_sent(s, job.id)
    store.add_event(s, job.id, "handed_back", message, arrival, "warning")
    return False


def check_hub_source(settings: Settings, model: str) -> None:
    """Fail a hub model that cannot be loaded before loading it (`loracle.hub.HubError`)."""
    from loracle.hub import check_before_load
    from loracle.model_source import is_hub_id

    if is_hub_id(model):
        check_before_load(model, settings.hub_timeout_s)


def hub_failure(model: str, exc: BaseException) -> Any:
    """The `loracle.hub.HubError` of a hub model that failed to load, or None."""
    from loracle.hub import load_failure
    from loracle.model_source import is_hub_id

    return load_failure(model, exc) if is_hub_id(model) else None


def pause(settings: Settings, job_id: str, token: int, step: int) -> str:
    """The run stopped at a checkpoint of `step` because a pause was asked for: the job is
    paused, off its card, until it is resumed (then it continues from that checkpoint)."""
    message = (
        f"paused at step {step}, checkpointed; POST .../resume queues it again to continue "
        "from there"
    )
    with session(settings.resolved_database_url) as s:
        if store.pause_stopped(s, job_id, token, message, {"step": step}):
            return store.PAUSED
        # A cancel arrived meanwhile, or the lease was lost.
        status = store.finish(s, job_id, token, store.CANCELLED, f"cancelled at step {step}")
    return status or "lease-lost"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_job(job_id: str, settings: Settings) -> str:
    """Run a job to its end if this process can take its lease; returns the job's
    status as this process leaves it. Safe to call for any delivery of any job."""
    url = settings.resolved_database_url
    faults.before_lease(settings, job_id)
    with session(url) as s:
        job = store.get_job(s, job_id, any_owner=True)
        if job is None:
            log.warning("job %s is not in the store; message dropped", job_id)
            return "missing"
        if job.status == store.QUEUED and shutdown.requested():
            return shutdown.hand_back(s, job_id)
        if job.status == store.QUEUED and not _room_for(settings, s, job):
            return "handed-back"
        token = store.acquire(s, job_id, worker_name(), settings.lease_ttl_s, settings.max_attempts)
        if token is None:
            s.refresh(job)
            if job.status == store.QUEUED and job.cancel_requested_at is not None:
                store.transition(
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
        from worker.distributed import job_cards, run_job_training
        from worker.transport import files_for

        check_hub_source(settings, job.model)
        files = files_for(settings, job_id, token)  # the shared disk, or the API's
        plan = build_plan(settings, job, files.data_file)
        files.restore_checkpoint(plan.output_dir)
        if start_from_source(settings, job, hooks):
            plan = plan.model_copy(update={"ignore_data_skip": True})
        with session(url) as s:
            store.update_progress(s, job_id, token, plan=plan.model_dump(mode="json"))
        record_token_stats(settings, job, plan, hooks)
        # One card: in this process; several: one rank per card under torchrun.
        result = run_job_training(plan, files.hooks(hooks), job, token, settings)
        if job_cards(job)[0] > 1:
            # The ranks report to the store themselves, not through `files.hooks`: what
            # they wrote goes to the file store from here (a no-op on the shared disk).
            files.publish_run(result)
    except LeaseLost as exc:  # another process owns the job now: it records the outcome
        log.warning("job %s: %s", job_id, exc)
        return "lease-lost"
    except FileStoreUnreachable as exc:  # this host's fault, not the job's: another try
        log.warning("job %s: %s", job_id, exc)
        hooks.close()  # its queued events land before the requeue's
        with session(url) as s:
            status = store.retry_elsewhere(
                s, job_id, token, settings.max_attempts, "FileStoreUnreachable", str(exc)
            )
        return status or "lease-lost"
    except Exception as exc:  # the job fails; the worker goes on to the next one
        if hooks.checkpoint_on_stop():  # failed on its way to the shutdown's checkpoint
            log.exception("job %s: no checkpoint for the shutdown", job_id)
            return shutdown.requeue(
                settings, job_id, token, worker_name(), job_dir(settings, job_id), error=exc
            )
        log.exception("job %s failed", job_id)
        error_type, message = exc.__class__.__name__, str(exc) or exc.__class__.__name__
        extra: dict[str, Any] = {}
        if (hub := hub_failure(job.model, exc)) is not None:  # the codes the API answers
            error_type, message = hub.code, str(hub)
        if isinstance(exc, OutOfMemory):  # retried, and still did not fit (worker/oom.py)
            error_type = exc.code
            if exc.peak is not None:
                extra["measured_peak"] = exc.peak.model_dump(mode="json")
        with session(url) as s:
            status = store.finish(
                s,
                job_id,
                token,
                store.FAILED,
                f"failed: {message}",
                error_type=error_type,
                error_message=message,
                **extra,
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
        "trained_tokens": result.tokens_seen,
    }
    if result.status == "stopped" and hooks.pause and not shutdown.requested():
        return pause(settings, job_id, token, result.steps)
    if result.status == "stopped":
        where = job_dir(settings, job_id)
        return shutdown.requeue(
            settings, job_id, token, worker_name(), where, stopped_at=result.steps
        )
    with session(url) as s:
        metrics = Path(result.artifacts.get("metrics", ""))
        if result.status == "succeeded" and metrics.is_file():
            # OpenAI's result_files: the metrics file, readable through /v1/files.
            data = metrics.read_bytes()
            values["result_files"] = [
                store.add_result_file(
                    s,
                    job_id,
                    metrics.name,
                    len(data),
                    hashlib.sha256(data).hexdigest(),
                    job.owner,
                )
            ]
        if result.status == "cancelled":
            said = f"cancelled while running, at step {result.steps}; " + outcome(result.kept or {})
            status = store.finish(
                s, job_id, token, store.CANCELLED, said, cancel_outcome=said, **values
            )
        else:
            status = store.finish(s, job_id, token, store.SUCCEEDED, "training finished", **values)
        if status is None:
            s.rollback()  # another process owns the job: no result file of this run either
    return status or "lease-lost"


# -- merge ------------------------------------------------------------------------------------


class RemoteMergeUnsupported(RuntimeError):
    """A merge sent to a worker without the API's data directory."""


# The error codes of a failed merge (the `merge_failed` event's `error`), by exception.
MERGE_ERRORS: dict[str, str] = {
    "RemoteMergeUnsupported": "remote_worker_unsupported",
    "ModelSourceError": "model_source",
    "PlanError": "invalid_plan",
    "FileNotFoundError": "adapter_missing",
    "FileExistsError": "model_root_taken",
    "OutOfMemoryError": "out_of_memory",
    "MemoryError": "out_of_memory",
}


def publish_into_model_root(settings: Settings, merged: Path, name: str, job_id: str) -> Path:
    """Copy the merged model to `name` in the first model root, atomically (hard links where
    the root is on the same filesystem: no second copy of the weights). A directory already
    there is replaced only when it is an earlier merge of this same job; anything else is left
    alone (`FileExistsError`)."""
    from worker.artifacts import publish_dir
    from worker.merge import RECORD_FILE, read_record

    roots = settings.allowed_model_roots
    if not roots:
        raise FileNotFoundError("no model root is configured (LORACLE_MODEL_ROOTS)")
    target = roots[0] / name
    if target.exists() and not (
        (target / RECORD_FILE).is_file() and read_record(target).get("job_id") == job_id
    ):
        raise FileExistsError(
            f"{target} exists and is not a merge of job {job_id}; pick another into_model_root"
        )

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    def fill(directory: Path) -> None:
        shutil.copytree(merged, directory, dirs_exist_ok=True, copy_function=link_or_copy)

    return publish_dir(roots[0], name, fill)


def execute_merge(job_id: str, settings: Settings) -> str:
    """Merge a succeeded job's adapter into its base, as its newest `merge_requested` event
    asks, and record `merge_started`, then `merged` or `merge_failed`. Returns the merge's
    state as this process leaves it. Safe for any delivery: a merge that is no longer merely
    requested (another delivery started it, or it ended) is left alone."""
    from worker.merge import job_adapter_plan, merge_adapter

    url = settings.resolved_database_url
    with session(url) as s:
        job = store.get_job(s, job_id, any_owner=True)
        merge = store.latest_merge_events(s, job_id) if job is not None else []
        if job is None or not merge or merge[-1].type != store.MERGE_REQUESTED:
            log.info("merge of %s: nothing requested (or already under way); skipped", job_id)
            return "skipped"
        request = dict(merge[-1].data or {})
        if job.status != store.SUCCEEDED:
            store.add_event(
                s,
                job_id,
                store.MERGE_FAILED,
                f"merge refused: the job is {job.status}, only a succeeded job merges",
                {"error": "job_not_succeeded", "message": f"job is {job.status}"},
                level="error",
            )
            return "failed"
        store.add_event(
            s, job_id, store.MERGE_STARTED, f"merge started on {worker_name()}", request
        )
    adapter = jobfiles.job_dir(settings.data_dir, job_id) / jobfiles.ADAPTER_DIRNAME
    try:
        from loracle.model_source import is_local, resolve_model_source

        if settings.api_url:
            raise RemoteMergeUnsupported(
                "this worker shares no disk with the API (LORACLE_API_URL is set): the job's "
                "adapter is on the API's side, and merging on a remote worker is not supported "
                "yet; run a worker on the API's data directory, or `python -m worker merge` there"
            )
        plan = job_adapter_plan(adapter)
        base = plan.model
        if is_local(base):  # checked again, as before training: inside a root, no remote code
            base = resolve_model_source(base, settings.allowed_model_roots)
        result = merge_adapter(
            base,
            adapter,
            jobfiles.merged_dir(settings.data_dir, job_id),
            request.get("dtype"),
            job_id=job_id,
        )
        data: dict[str, Any] = {"path": result.out_dir, **result.model_dump(mode="json")}
        into = request.get("into_model_root")
        if into:
            placed = publish_into_model_root(settings, Path(result.out_dir), into, job_id)
            data["model_root_path"] = str(placed)
            data["model"] = into  # what a later job names as its model
    except Exception as exc:
        log.exception("merge of %s failed", job_id)
        code = MERGE_ERRORS.get(type(exc).__name__, "merge_failed")
        with session(url) as s:
            store.add_event(
                s,
                job_id,
                store.MERGE_FAILED,
                f"merge failed: {exc}",
                {"error": code, "error_type": type(exc).__name__, "message": str(exc)},
                level="error",
            )
        return "failed"
    with session(url) as s:
        size = data["bytes"] / 2**30
        store.add_event(
            s,
            job_id,
            store.MERGED,
            f"merged into {data['dtype']} ({size:.3g} GiB) at {data['path']}",
            data,
        )
    return "succeeded"
