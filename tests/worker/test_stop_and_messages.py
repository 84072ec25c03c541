"""Real runs of the tiny model with the production hooks on a real SQLite store: the events a
run reports carry readable messages with their numbers, and a stop for the worker's shutdown
checkpoints its step and puts the job back in the queue at once."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loracle.plan import load_plan
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.db import session
from tests.utils.builders import add_placeholder_file, plan_dict
from tests.worker.test_service import job_row, running_job
from worker import shutdown
from worker.checkpoints import CHECKPOINT_MARKER
from worker.service import StoreHooks, execute_job
from worker.training import run_training


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", auth_disabled=True)


@pytest.fixture(autouse=True)
def no_stop_request() -> Iterator[None]:
    shutdown.reset()
    yield
    shutdown.reset()


def stored_events(settings: Settings, job_id: str) -> list[dict[str, Any]]:
    with session(settings.resolved_database_url) as s:
        rows, _ = store.list_events(s, job_id, limit=1000, after=None)
        return [{"type": e.type, "message": e.message, "data": e.data} for e in rows]


def _run(settings: Settings, job_id: str, token: int, plan: Any, hooks: StoreHooks | None = None):
    hooks = hooks or StoreHooks(settings, job_id, token)
    try:
        return run_training(plan, hooks)
    finally:
        hooks.close()


def test_every_event_of_a_run_and_its_resume_has_a_message_with_its_numbers(
    settings, tiny_model, data_dir, tmp_path
):
    run_dir = tmp_path / "run"
    job_id, token = running_job(settings)
    first = plan_dict(tiny_model, data_dir / "text.jsonl", run_dir, max_steps=4, checkpoint_steps=2)
    result = _run(settings, job_id, token, load_plan(first))
    # The same run directory, two more steps: it resumes from checkpoint-4.
    more = {**first, "max_steps": 6}
    _run(settings, job_id, token, load_plan(more))

    events = stored_events(settings, job_id)
    assert all(e["message"] for e in events), [e for e in events if not e["message"]]
    by_type: dict[str, list[str]] = {}
    for e in events:
        by_type.setdefault(e["type"], []).append(e["message"])
    assert by_type["started"][0].startswith("training started on cpu (fp32, ")
    assert "lora" in by_type["started"][0] and "parameters trained" in by_type["started"][0]
    checkpoint_2 = str(run_dir / "checkpoints" / "checkpoint-2")
    assert by_type["checkpoint"][0] == f"checkpoint of step 2 written to {checkpoint_2}"
    assert by_type["resumed"] == [
        f"resumed at step 4 from {run_dir / 'checkpoints' / 'checkpoint-4'}"
    ]
    finished = by_type["finished"][0]
    assert finished.startswith(f"training finished at step 4, loss {result.final_loss:.4f}")
    assert finished.endswith(f"adapter in {run_dir / 'adapter'}")


class ShutdownAt(StoreHooks):
    """Production hooks in a pool process that receives SIGTERM once step `at` is reported."""

    def __init__(self, *args: Any, at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.at = at

    def on_progress(self, step: int, *args: Any) -> None:
        super().on_progress(step, *args)
        if step == self.at:
            shutdown.request(signal.SIGTERM)


def test_a_shutdown_checkpoints_the_step_it_stops_at_and_requeues_the_job(
    settings, tiny_model, data_dir, tmp_path
):
    run_dir = tmp_path / "run"
    job_id, token = running_job(settings)
    plan = load_plan(
        plan_dict(tiny_model, data_dir / "text.jsonl", run_dir, max_steps=20, checkpoint_steps=None)
    )
    hooks = ShutdownAt(settings, job_id, token, at=3)
    result = _run(settings, job_id, token, plan, hooks)
    # Step 4 was under way when the request was seen at its end; it is checkpointed.
    assert (result.status, result.steps) == ("stopped", 4)
    assert (run_dir / "checkpoints" / "checkpoint-4" / CHECKPOINT_MARKER).is_file()
    assert not (run_dir / "adapter").exists()

    status = shutdown.requeue(settings, job_id, token, "w:1", run_dir, stopped_at=result.steps)
    assert status == store.QUEUED
    row = job_row(settings, job_id)
    assert (row.status, row.lease_owner, row.lease_expires_at, row.enqueued_at) == (
        "queued",
        None,
        None,
        None,
    )
    assert row.attempts == 0, "the shutdown gave its attempt back"
    requeued = stored_events(settings, job_id)[-1]
    assert requeued["type"] == "requeued"
    assert requeued["message"] == (
        "worker w:1 is shutting down (SIGTERM): stopped at step 4 and wrote a checkpoint; "
        "requeued, the next worker resumes from checkpoint-4 (step 4)"
    )
    with session(settings.resolved_database_url) as s:
        assert store.acquire(s, job_id, "w:2", ttl_s=60, max_attempts=1) is not None, (
            "the next worker takes it at once, with no lease to wait out"
        )


def test_a_shutdown_that_could_not_checkpoint_says_why_and_still_requeues(settings, tmp_path):
    job_id, token = running_job(settings)
    shutdown.request(signal.SIGINT)
    error = OSError(28, "No space left on device")
    assert shutdown.requeue(settings, job_id, token, "w:1", tmp_path, error=error) == "queued"
    requeued = stored_events(settings, job_id)[-1]
    assert requeued["message"] == (
        "worker w:1 is shutting down (SIGINT): could not write a checkpoint (OSError: [Errno 28] "
        "No space left on device); requeued, the next worker resumes from the start"
    )
    assert requeued["data"]["checkpoint"] is None


def test_a_cancel_pending_at_the_shutdown_ends_the_job_cancelled(settings, tmp_path):
    job_id, token = running_job(settings)
    with session(settings.resolved_database_url) as s:
        job = store.get_job(s, job_id, any_owner=True)
        assert job is not None and store.request_cancel(s, job) == store.RUNNING
    shutdown.request(signal.SIGTERM)
    assert shutdown.requeue(settings, job_id, token, "w:1", tmp_path, stopped_at=3) == "cancelled"
    assert job_row(settings, job_id).status == "cancelled"


def test_a_job_that_arrives_after_the_stop_request_is_handed_back_unstarted(settings):
    url = settings.resolved_database_url
    job_id = store.new_id("job")
    with session(url) as s:
        store.add_job(
            s,
            id=job_id,
            owner=None,
            model="m",
            training_file=add_placeholder_file(s),
            variant="lora",
            requested_variant="lora",
            hyperparameters={},
        )
        store.mark_sent(s, job_id)
    shutdown.request(signal.SIGTERM)
    assert execute_job(job_id, settings) == "handed-back"
    row = job_row(settings, job_id)
    assert (row.status, row.attempts, row.enqueued_at) == ("queued", 0, None)
    handed = stored_events(settings, job_id)[-1]
    assert handed["type"] == "handed_back" and "shutting down (SIGTERM)" in handed["message"]


class _SignalDuringLog(logging.Handler):
    """Delivers a second SIGTERM while the first request's log line is being written: Python
    runs a signal handler between any two bytecodes, so under load the forwarded signal lands
    inside the first handler call."""

    def __init__(self) -> None:
        super().__init__()
        self.nested = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.nested == 0:
            self.nested += 1
            shutdown.request(signal.SIGTERM)


def test_a_second_signal_inside_the_first_request_neither_blocks_nor_forces_a_stop():
    handler = _SignalDuringLog()
    logger = logging.getLogger("loracle.worker")
    logger.addHandler(handler)
    try:
        caller = threading.Thread(target=shutdown.request, args=(signal.SIGTERM,), daemon=True)
        caller.start()
        caller.join(timeout=10)
        assert not caller.is_alive(), "the nested request waited for its own caller"
    finally:
        logger.removeHandler(handler)
    assert handler.nested == 1
    assert shutdown.requested() == "SIGTERM", "one request, noted once"
