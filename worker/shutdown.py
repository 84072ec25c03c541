"""A worker that is asked to stop (Ctrl-C, SIGTERM) leaves its running job in a true state.

Without this, SIGTERM killed the training process at once (Celery resets SIGTERM to its default
action in pool processes), and the job read `running` until its lease expired, some 30 s after
the next start, before it was requeued. Now:

1. The signal reaches the training process, directly or through the worker. Ctrl-C and a
   `kill` of the process group reach every process; a SIGTERM to the worker alone (`docker
   stop`, systemd's `KillMode=mixed`, `loracle up` stopping its worker) is forwarded to its pool
   processes once by `forward_to_pool`, from Celery's `worker_shutting_down` signal. The worker
   itself does Celery's warm shutdown: it takes no new message and waits for the running job.
2. The training process only notes the request (`request`): the run goes on to the end of its
   current optimizer step, where `StoreHooks.should_stop` sees it (`requested`) and the Trainer
   saves a checkpoint of that step before it stops (`TrainingHooks.checkpoint_on_stop`).
3. `requeue` puts the job back in the queue at once with an event that names the shutdown and
   the checkpoint the next run resumes from (or why none could be written), releases the lease
   and marks the job unsent: the dispatcher sends it again, and the next worker to start takes
   it without waiting out a lease. A shutdown does not use one of the job's `max_attempts`.

Asked again more than `FORCE_AFTER_S` after the first request (a second Ctrl-C, Celery's cold
shutdown terminating its tasks), the training process dies at once as before, and the lease
recovers the job. Within that time a second signal is the same request arriving twice (Ctrl-C
reaches the process directly and through the worker).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.db import session

log = logging.getLogger("loracle.worker")

# Signals that ask for a stop. SIGINT is what Ctrl-C sends to the whole foreground group.
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A signal this long after the first request means "stop now" (see the module docstring).
FORCE_AFTER_S = 2.0

# Re-entrant: `request` runs as a signal handler on the main thread, and a second signal can
# run it again inside the first call (Python runs handlers between any two bytecodes). With a
# plain lock that nested call waited forever for its own caller, which held the lock while it
# logged: the job's thread then blocked on the logging lock inside its requeue's transaction,
# and the worker never exited.
_lock = threading.RLock()
_first: dict[str, Any] = {}
_forwarded = threading.Event()


def requested() -> str | None:
    """The name of the signal that asked this process to stop, or None."""
    return _first.get("signal")


def request(signum: int) -> None:
    """Note a stop request (a signal handler in pool processes; tests call it directly).
    Nothing here waits while holding the lock, and the log line comes after it is released."""
    name = signal.Signals(signum).name
    with _lock:
        first = "signal" not in _first
        if first:
            _first.update(signal=name, at=time.monotonic())
            again = False
        else:
            again = time.monotonic() - _first["at"] > FORCE_AFTER_S
    if first:
        log.warning(
            "%s received: the running job stops at the end of its current step, writes a "
            "checkpoint and goes back to the queue",
            name,
        )
    elif again:
        log.warning("%s received again: stopping now, without a checkpoint", name)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def reset() -> None:
    """Forget a request (a new pool process, and tests)."""
    with _lock:
        _first.clear()


def install_in_pool_process() -> None:
    """Handle SIGTERM and SIGINT in a pool process as stop requests, from the job's start.
    billiard's own handlers exit on SIGTERM and ignore SIGINT. A handler on the process's main
    thread runs while that thread waits for the job's thread (`on_fresh_stack`)."""
    for signum in SIGNALS:
        signal.signal(signum, lambda received, _frame: request(received))


def forward_to_pool(sig: str, how: str) -> None:
    """In the worker's main process, at a warm shutdown: send the signal on to the pool
    processes, once (a later SIGTERM, `loracle up` stopping a worker that Ctrl-C already
    stopped, would otherwise read as "stop now"). A cold shutdown terminates its tasks itself."""
    if how != "Warm" or _forwarded.is_set():
        return
    _forwarded.set()
    from billiard.process import active_children

    signum = getattr(signal, sig, signal.SIGTERM)
    for child in active_children():
        if child.pid:
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:  # it ended meanwhile
                continue


def hand_back(s: Any, job_id: str) -> str:
    """A job that arrives after the stop request (the message was on its way): left queued,
    unstarted, and unmarked as sent, so the dispatcher sends it to the next worker."""
    signame = requested() or "a stop request"
    store.unmark_sent(s, job_id)
    store.add_event(
        s,
        job_id,
        "handed_back",
        f"the worker is shutting down ({signame}); handed back to its queue before starting",
        {"reason": "shutdown", "signal": signame},
    )
    return "handed-back"


def _resume_point(output_dir: Path) -> tuple[Path | None, int]:
    from worker.checkpoints import CHECKPOINTS_DIRNAME, find_resumable_checkpoint

    path, step, _ = find_resumable_checkpoint(output_dir / CHECKPOINTS_DIRNAME)
    return path, step


def requeue(
    settings: Settings,
    job_id: str,
    token: int,
    worker: str,
    output_dir: Path,
    *,
    stopped_at: int | None = None,
    error: BaseException | None = None,
) -> str:
    """Put a job this process stopped for its shutdown back in the queue (see the module
    docstring). `stopped_at` is the step the run stopped and checkpointed at; `error` what
    kept it from getting there. Returns the job's status as this process leaves it."""
    signame = requested() or "a stop request"
    checkpoint, step = _resume_point(output_dir)
    resume = f"{checkpoint.name} (step {step})" if checkpoint is not None else "the start"
    failure = None
    if error is None:
        what = f"stopped at step {stopped_at} and wrote a checkpoint"
    else:
        reason = (str(error) or type(error).__name__).splitlines()[0][:300]
        failure = f"{type(error).__name__}: {reason}"
        what = f"could not write a checkpoint ({failure})"
    message = (
        f"worker {worker} is shutting down ({signame}): {what}; requeued, the next worker "
        f"resumes from {resume}"
    )
    data = {
        "reason": "shutdown",
        "signal": signame,
        "worker": worker,
        "stopped_at_step": stopped_at,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "checkpoint_step": step if checkpoint is not None else None,
        "checkpoint_error": failure,
    }
    # The log line comes after the commit: nothing holds the database's write lock while it
    # waits for something else.
    with session(settings.resolved_database_url) as s:
        released = store.release(s, job_id, token, message, data, "warning" if error else "info")
        if not released:
            # A cancel arrived meanwhile (it ends the job), or the lease was lost.
            status = store.finish(
                s, job_id, token, store.CANCELLED, f"cancelled while running; {what}"
            )
    if released:
        log.warning("job %s: %s", job_id, message)
        return store.QUEUED
    return status or "lease-lost"
