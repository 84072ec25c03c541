"""`retry_elsewhere`: an attempt ended by the worker's surroundings (FileStoreUnreachable)
puts the job back in its queue, and fails it with that code only once it has used its
attempts; a process that lost the lease changes nothing."""

from __future__ import annotations

from pathlib import Path

from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.db import session
from tests.utils.builders import add_placeholder_file, add_running_job

CODE = "FileStoreUnreachable"


def test_requeued_until_the_last_attempt_then_failed_with_the_code(tmp_path: Path):
    url = Settings(data_dir=tmp_path).resolved_database_url
    with session(url) as s:
        file_id = add_placeholder_file(s)
    job_id, token = add_running_job(url, file_id, None, max_attempts=2)
    with session(url) as s:
        store.mark_sent(s, job_id)
        assert store.retry_elsewhere(s, job_id, token, 2, CODE, "no route to host") == "queued"
    with session(url) as s:
        row = store.get_job(s, job_id, any_owner=True)
        assert row is not None and row.lease_owner is None and row.enqueued_at is None
        assert row.error_type is None  # an attempt failed, not the job
        requeued = [e for e in store.list_events(s, job_id, 100, None)[0] if e.type == "requeued"]
        assert requeued and requeued[0].data["error_type"] == CODE
        # The stale token of the first attempt can no longer end anything.
        assert store.retry_elsewhere(s, job_id, token, 2, CODE, "late") is None
        second = store.acquire(s, job_id, "other-host:1", 60, 2)
    assert second is not None and second != token
    with session(url) as s:
        assert store.retry_elsewhere(s, job_id, second, 2, CODE, "no route to host") == "failed"
    with session(url) as s:
        row = store.get_job(s, job_id, any_owner=True)
        assert row is not None and row.status == "failed" and row.attempts == 2
        assert row.error_type == CODE and "no route to host" in (row.error_message or "")
