"""Job status follows a state machine, whatever order the API, workers and the
reaper act in: terminal states never change; a cancel wins over a late success
only when it was accepted first, and the record says so; a worker that lost its
lease writes nothing."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import update

from loracle.store import jobs as store
from loracle.store.db import session
from loracle.store.models import JobRow, now
from tests.utils.builders import add_placeholder_file
from tests.utils.postgres import fresh_database

ALLOWED = {
    store.QUEUED: {store.QUEUED, store.RUNNING, store.CANCELLED},
    store.RUNNING: {store.RUNNING, store.QUEUED, store.SUCCEEDED, store.FAILED, store.CANCELLED},
    store.SUCCEEDED: {store.SUCCEEDED},
    store.FAILED: {store.FAILED},
    store.CANCELLED: {store.CANCELLED},
}
MAX_ATTEMPTS = 3


class JobLifecycle(RuleBasedStateMachine):
    database_url: str | None = None  # None: a new SQLite file per example

    def __init__(self) -> None:
        super().__init__()
        if self.database_url is None:
            folder = Path(tempfile.mkdtemp(prefix="loracle-sm-"))
            self.url = f"sqlite:///{folder / 'store.db'}"
        else:
            self.url = self.database_url
        self.job_id = store.new_id("job")
        with session(self.url) as s:
            file_id = add_placeholder_file(s)
            s.add(
                JobRow(
                    id=self.job_id,
                    status=store.QUEUED,
                    model="org/model",
                    training_file=file_id,
                    variant="lora",
                    requested_variant="lora",
                )
            )
        self.tokens: list[int] = []  # every token ever handed out, newest last
        self.last = store.QUEUED
        self.cancel_accepted_while_running = False
        self.terminal_record: tuple[str, object] | None = None

    def _job(self) -> JobRow:
        with session(self.url) as s:
            job = store.get_job(s, self.job_id, any_owner=True)
            assert job is not None
            return job

    @rule()
    def worker_acquires(self) -> None:
        with session(self.url) as s:
            token = store.acquire(s, self.job_id, "w", ttl_s=60, max_attempts=MAX_ATTEMPTS)
        if token is not None:
            assert not self.tokens or token > self.tokens[-1], "fencing tokens only grow"
            self.tokens.append(token)

    @precondition(lambda self: self.tokens)
    @rule(stale=st.booleans(), outcome=st.sampled_from([store.SUCCEEDED, store.FAILED]))
    def worker_finishes(self, stale: bool, outcome: str) -> None:
        token = self.tokens[0] if stale else self.tokens[-1]
        before = self._job()
        with session(self.url) as s:
            recorded = store.finish(s, self.job_id, token, outcome)
        after = self._job()
        owner = before.status == store.RUNNING and before.fencing_token == token
        if not owner:
            assert recorded is None, "a worker without the lease must write nothing"
            assert after.status == before.status
            return
        # The model's own account of the order of events decides, not the row's flag: a
        # cancel the API accepted while the job ran came before this success.
        assert (before.cancel_requested_at is not None) == self.cancel_accepted_while_running
        if outcome == store.SUCCEEDED and self.cancel_accepted_while_running:
            assert recorded == store.CANCELLED, "the cancel was accepted first: it wins"
            assert after.cancel_outcome and "cancel accepted" in after.cancel_outcome
            assert after.cancel_requested_at is not None and after.finished_at is not None
            assert after.cancel_requested_at <= after.finished_at, "the record shows the order"
        else:
            # No cancel came first (or the run failed): the worker's outcome stands.
            assert recorded == outcome
            if outcome == store.SUCCEEDED:
                assert after.cancel_outcome is None

    @precondition(lambda self: self.tokens)
    @rule()
    def worker_heartbeats(self) -> None:
        before = self._job()
        with session(self.url) as s:
            alive = store.heartbeat(s, self.job_id, self.tokens[-1], 60)
        assert alive == (before.status == store.RUNNING and before.fencing_token == self.tokens[-1])

    @rule()
    def api_cancels(self) -> None:
        with session(self.url) as s:
            job = store.get_job(s, self.job_id, any_owner=True)
            assert job is not None
            was = job.status
            status = store.request_cancel(s, job)
        if was == store.QUEUED:
            assert status == store.CANCELLED
        if was == store.RUNNING:
            assert status == store.RUNNING
            self.cancel_accepted_while_running = True

    @rule()
    def lease_expires_and_reaper_runs(self) -> None:
        before = self._job()
        with session(self.url) as s:
            s.execute(
                update(JobRow)
                .where(JobRow.id == self.job_id, JobRow.status == store.RUNNING)
                .values(lease_expires_at=now().replace(year=2000))
            )
            store.reap(s, MAX_ATTEMPTS)
        if before.status == store.RUNNING and self.cancel_accepted_while_running:
            # A dead worker's job with a cancel accepted is cancelled, never run again.
            assert self._job().status == store.CANCELLED

    @invariant()
    def transitions_are_allowed_and_terminal_states_stay(self) -> None:
        job = self._job()
        assert job.status in ALLOWED[self.last], f"{self.last} -> {job.status}"
        if job.status in store.TERMINAL:
            record = (job.status, job.finished_at)
            if self.terminal_record is not None:
                assert record == self.terminal_record, "a terminal state changed"
            self.terminal_record = record
        assert job.attempts <= MAX_ATTEMPTS
        self.last = job.status


SETTINGS = settings(max_examples=60, stateful_step_count=25, deadline=None)


def test_lifecycle_on_sqlite() -> None:
    run_state_machine_as_test(JobLifecycle, settings=SETTINGS)


def test_lifecycle_on_postgresql() -> None:
    with fresh_database() as url:

        class OnPostgres(JobLifecycle):
            database_url = url

        run_state_machine_as_test(OnPostgres, settings=settings(SETTINGS, max_examples=30))
