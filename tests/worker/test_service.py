"""StoreHooks, the bridge between a training run and the job store: what it writes,
when, in what order, and what it refuses to write once the job's lease is lost.
Against a real SQLite store; one test trains the tiny model for real."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from loracle.plan import load_plan
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.db import session
from loracle.store.models import JobRow
from tests.utils.builders import add_placeholder_file, plan_dict
from worker.errors import LeaseLost, StoreUnavailable
from worker.service import StoreHooks
from worker.training import run_training

NEVER = 3600.0  # a flush interval the background thread never reaches in a test


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", auth_disabled=True)


def running_job(settings: Settings) -> tuple[str, int]:
    """A job in the store, taken by this process: its id and fencing token."""
    url = settings.resolved_database_url
    job_id = store.new_id("job")
    with session(url) as s:
        file_id = add_placeholder_file(s)
        store.add_job(
            s,
            id=job_id,
            owner=None,
            model="m",
            training_file=file_id,
            variant="lora",
            requested_variant="lora",
            hyperparameters={},
        )
    with session(url) as s:
        token = store.acquire(s, job_id, "test-worker", ttl_s=60, max_attempts=3)
    assert token is not None
    return job_id, token


def job_row(settings: Settings, job_id: str) -> JobRow:
    with session(settings.resolved_database_url) as s:
        row = store.get_job(s, job_id, any_owner=True)
        assert row is not None
        return row


def events(settings: Settings, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    with session(settings.resolved_database_url) as s:
        rows, _ = store.list_events(s, job_id, limit=1000, after=None)
        return [(e.type, e.data) for e in rows]


def take_over(url: str, job_id: str, token: int) -> None:
    """What another worker's acquire does once this one's lease has expired: a new token."""
    with session(url) as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(fencing_token=token + 1))


def cancel_in_store(settings: Settings, job_id: str) -> None:
    """What POST /v1/jobs/{id}/cancel does to a running job."""
    with session(settings.resolved_database_url) as s:
        job = store.get_job(s, job_id, any_owner=True)
        assert job is not None
        assert store.request_cancel(s, job) == store.RUNNING


def report(hooks: StoreHooks, step: int) -> None:
    hooks.on_progress(step, 10, 2.0 / step, 1e-3, 100.0 * step, 10.0 - step)


def test_progress_is_queued_and_lands_in_order_before_the_next_event(settings):
    job_id, token = running_job(settings)
    hooks = StoreHooks(settings, job_id, token, flush_s=NEVER)
    try:
        hooks.on_event("started", {"device": "cpu"})
        report(hooks, 1)
        report(hooks, 2)
        # The training loop did not wait for the store: nothing of steps 1-2 is there yet.
        assert job_row(settings, job_id).step == 0
        assert [t for t, _ in events(settings, job_id)][-1] == "started"
        hooks.on_event("checkpoint", {"step": 2, "path": "checkpoint-2"})
        row = job_row(settings, job_id)
        assert (row.step, row.total_steps, row.loss) == (2, 10, 1.0)
        kinds = [(t, d.get("step")) for t, d in events(settings, job_id)]
        assert kinds[-4:] == [("started", None), ("metrics", 1), ("metrics", 2), ("checkpoint", 2)]
        report(hooks, 3)
    finally:
        hooks.close()
    # What was still queued at close is written too.
    assert job_row(settings, job_id).step == 3
    assert [d.get("step") for t, d in events(settings, job_id) if t == "metrics"] == [1, 2, 3]


def test_the_background_thread_writes_progress_without_being_asked(settings):
    job_id, token = running_job(settings)
    hooks = StoreHooks(settings, job_id, token, flush_s=0.05)
    try:
        report(hooks, 4)
        deadline = time.monotonic() + 10
        while job_row(settings, job_id).step != 4:
            assert time.monotonic() < deadline, "progress never reached the store"
            time.sleep(0.02)
        assert job_row(settings, job_id).eta_seconds == 6.0
    finally:
        hooks.close()


def test_nothing_is_written_once_the_lease_is_lost(settings):
    job_id, token = running_job(settings)
    hooks = StoreHooks(settings, job_id, token, flush_s=NEVER)
    try:
        report(hooks, 1)
        hooks.on_event("checkpoint", {"step": 1})
        before = events(settings, job_id)
        # Another process took the job over (its lease expired here): a new token.
        take_over(settings.resolved_database_url, job_id, token)
        report(hooks, 2)
        hooks.on_event("checkpoint", {"step": 2})
        assert hooks.lost.is_set()
        assert hooks.should_stop()
        report(hooks, 3)
    finally:
        hooks.close()
    assert events(settings, job_id) == before
    assert job_row(settings, job_id).step == 1


def test_a_cancel_in_the_store_is_seen_at_the_next_check(settings):
    job_id, token = running_job(settings)
    hooks = StoreHooks(settings, job_id, token, flush_s=NEVER, cancel_poll_s=0)
    try:
        assert not hooks.should_stop()
        cancel_in_store(settings, job_id)
        assert hooks.should_stop()
    finally:
        hooks.close()


def test_the_end_of_an_optimizer_step_always_asks_the_store(settings):
    job_id, token = running_job(settings)
    # Micro-batch checks may answer from a recent read; a step's end never does.
    hooks = StoreHooks(settings, job_id, token, flush_s=NEVER, cancel_poll_s=NEVER)
    try:
        assert not hooks.should_stop()
        cancel_in_store(settings, job_id)
        assert not hooks.should_stop()  # within the micro-batch throttle
        assert hooks.should_stop(step_end=True)
    finally:
        hooks.close()


def test_a_step_end_notices_a_lost_lease(settings):
    job_id, token = running_job(settings)
    hooks = StoreHooks(settings, job_id, token, flush_s=NEVER, cancel_poll_s=NEVER)
    try:
        assert not hooks.should_stop(step_end=True)
        assert hooks.owns_run()
        take_over(settings.resolved_database_url, job_id, token)
        assert hooks.should_stop(step_end=True)
        assert hooks.lost.is_set() and not hooks.owns_run()
    finally:
        hooks.close()


class CancelAt(StoreHooks):
    """Production hooks, plus a user who cancels through the store (as the API does)
    once step ``at`` has been reported."""

    def __init__(self, *args: Any, at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.at = at

    def on_progress(self, step: int, *args: Any) -> None:
        super().on_progress(step, *args)
        if step == self.at:
            with session(self.url) as s:
                job = store.get_job(s, self.job_id, any_owner=True)
                assert job is not None
                store.request_cancel(s, job)


def test_a_real_run_stops_at_the_step_after_the_cancel(settings, tiny_model, data_dir, tmp_path):
    job_id, token = running_job(settings)
    plan = load_plan(plan_dict(tiny_model, data_dir / "text.jsonl", tmp_path / "run"))
    # The production poll interval: micro-batches within 50 ms of a check do not ask, the
    # end of every optimizer step does.
    hooks = CancelAt(settings, job_id, token, at=3)
    try:
        result = run_training(plan, hooks)
    finally:
        hooks.close()
    # Step 4 was under way when the cancel was seen at its end; no step 5 is taken.
    assert (result.status, result.steps) == ("cancelled", 4)
    kinds = [t for t, _ in events(settings, job_id)]
    assert kinds.index("cancel_requested") < kinds.index("cancelled")
    assert job_row(settings, job_id).step == 4


class TakenOverAt(StoreHooks):
    """Production hooks for a process paused past its lease: once step ``at`` is reported,
    another process takes the job over (a new fencing token), before this one looks again."""

    def __init__(self, *args: Any, at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.at = at

    def on_progress(self, step: int, *args: Any) -> None:
        super().on_progress(step, *args)
        if step == self.at:
            take_over(self.url, self.job_id, self.token)


def test_a_run_that_lost_its_lease_writes_no_checkpoint_and_no_adapter(
    settings, tiny_model, data_dir, tmp_path
):
    job_id, token = running_job(settings)
    run_dir = tmp_path / "run"
    plan = load_plan(
        plan_dict(tiny_model, data_dir / "text.jsonl", run_dir, max_steps=6, checkpoint_steps=2)
    )
    # Taken over after step 2 was logged and before its checkpoint is saved: the step's end
    # had found the lease still held, so only the check before writing can catch it.
    hooks = TakenOverAt(settings, job_id, token, at=2)
    try:
        with pytest.raises(LeaseLost):
            run_training(plan, hooks)
    finally:
        hooks.close()
    assert not (run_dir / "checkpoints" / "checkpoint-2").exists()
    assert not (run_dir / "adapter").exists()
    assert hooks.lost.is_set()


def test_an_ownership_read_that_fails_is_retried_on_a_fresh_connection(settings):
    from loracle.store.db import engine_for

    job_id, token = running_job(settings)
    hooks = StoreHooks(settings, job_id, token, flush_s=NEVER)
    try:
        # A connection that died while idle (a long checkpoint save, a restarted store).
        hooks._conn = engine_for(hooks.url).connect()
        hooks._conn.close()
        assert hooks.owns_run()
    finally:
        hooks.close()


def test_a_store_that_stays_unreadable_writes_nothing_and_says_why(settings, monkeypatch):
    import worker.service

    job_id, token = running_job(settings)
    hooks = StoreHooks(settings, job_id, token, flush_s=NEVER)
    monkeypatch.setattr(worker.service, "OWNERSHIP_READS", (0.0, 0.01))
    try:
        blocker = settings.data_dir / "a-file-not-a-directory"
        blocker.write_text("")
        hooks.url = f"sqlite:///{blocker}/store.db"
        hooks._discard_connection()
        with pytest.raises(StoreUnavailable, match="could not be read"):
            hooks.owns_run()
        assert not hooks.lost.is_set()  # not a lost lease: nobody else owns the run
    finally:
        hooks.url = settings.resolved_database_url
        hooks.close()
