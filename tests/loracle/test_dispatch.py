"""The dispatcher and a submission's own send do not both send a new job: the job is
marked as being sent in the transaction that creates it. A send that fails clears the
mark, and the dispatcher sends the job once the broker takes it. Against a real SQLite
store and the embedded (filesystem) broker, whose queue is files we can count."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.jobs import service
from api.jobs.schemas import JobCreate
from loracle import dispatch
from loracle.queue import QUEUE, make_celery, waiting_job_ids
from loracle.settings import Settings
from loracle.store.db import session
from tests.utils.api import register_worker
from tests.utils.builders import add_placeholder_file
from tests.utils.hub import hub_that_has


class BrokerDown:
    def send_task(self, *args, **kwargs):
        raise ConnectionError("broker unreachable")


@pytest.fixture(autouse=True)
def _hub(monkeypatch):
    """The jobs here name the hub id org/model, which submission checks on the hub."""
    with hub_that_has(monkeypatch, "org/model"):
        yield


def _new_job(settings: Settings) -> str:
    with session(settings.resolved_database_url) as s:
        file_id = add_placeholder_file(s)
        body = JobCreate(model="org/model", training_file=file_id, variant="lora")
        return service.create_job(s, settings, body, None).id


def _messages(settings: Settings) -> int:
    return len(list((Path(settings.data_dir) / "broker" / "queue").glob(f"*.{QUEUE}*.msg")))


def test_a_job_being_sent_by_its_request_is_not_sent_by_the_dispatcher(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", auth_disabled=True)
    register_worker(settings)
    queue = make_celery(settings)
    job_id = _new_job(settings)  # committed; its request has not sent it yet
    assert dispatch.dispatch_pending(settings, queue) == 0
    assert dispatch.enqueue(settings, queue, job_id)
    assert dispatch.dispatch_pending(settings, queue) == 0
    assert waiting_job_ids(settings) == {job_id}
    assert _messages(settings) == 1


def test_a_job_whose_send_failed_is_sent_by_the_dispatcher(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", auth_disabled=True)
    register_worker(settings)
    job_id = _new_job(settings)
    assert not dispatch.enqueue(settings, BrokerDown(), job_id)  # type: ignore[arg-type]
    assert _messages(settings) == 0
    queue = make_celery(settings)
    assert dispatch.dispatch_pending(settings, queue) == 1
    assert dispatch.dispatch_pending(settings, queue) == 0
    assert waiting_job_ids(settings) == {job_id}


def test_a_round_stops_at_the_first_failed_send(tmp_path):
    """While the broker is down each publish waits for its retries; a round that tried every
    queued job would hold back the next reap of dead workers' jobs."""
    settings = Settings(data_dir=tmp_path / "data", auth_disabled=True)
    register_worker(settings)

    class CountingBrokerDown(BrokerDown):
        tries = 0

        def send_task(self, *args, **kwargs):
            CountingBrokerDown.tries += 1
            return super().send_task(*args, **kwargs)

    jobs = [_new_job(settings) for _ in range(3)]
    for job_id in jobs:  # each request's own send failed
        assert not dispatch.enqueue(settings, BrokerDown(), job_id)  # type: ignore[arg-type]
    assert dispatch.dispatch_pending(settings, CountingBrokerDown()) == 0  # type: ignore[arg-type]
    assert CountingBrokerDown.tries == 1
    assert dispatch.dispatch_pending(settings, make_celery(settings)) == 3
