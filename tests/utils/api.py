"""In-process API clients for tests: the real app, with its settings swapped
through FastAPI's dependency overrides (never by patching)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.main import create_app
from api.security import digest
from loracle.settings import Settings

KEY_A, KEY_B = "lor_test_key_a", "lor_test_key_b"


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "api_key_hashes": f"{digest(KEY_A)},{digest(KEY_B)}",
        "dispatch_interval_s": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


def client_for(settings: Settings, key: str | None = KEY_A) -> TestClient:
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return TestClient(app, raise_server_exceptions=False, headers=headers)


def register_worker(
    settings: Settings, memory_gib: float = 24.0, worker_id: str = "test-host:1", **fields: Any
) -> str:
    """A live CPU worker in the store, as `loracle worker --memory-gib` registers one (its
    lease long enough for any test): jobs get placed on its card class and sent to its
    queue. Returns the queue a one-card job goes to."""
    from loracle import placement
    from loracle.store import workers
    from loracle.store.db import session

    klass = placement.card_class("cpu", memory_gib, "cpu")
    card = {
        "index": "cpu",
        "name": "cpu",
        "total_gib": memory_gib,
        "free_gib": memory_gib,
        "compute_capability": None,
        "bf16": True,
    }
    values = {
        "host": worker_id.rpartition(":")[0],
        "card_class": klass,
        "cards": [card],
        "device": "cpu",
        "version": "test",
        "concurrency": 1,
        "queues": placement.queues_of(klass, 1, 1),
        **fields,
    }
    with session(settings.resolved_database_url) as s:
        workers.register(s, worker_id, 3600, **values)
    return placement.queue_for(klass, 1)


def error_code(body: dict[str, Any]) -> str:
    """The error code of an answer in either of the API's shapes: loracle's
    {"error": <code>, ...}, or OpenAI's {"error": {"code", "message", "type", "param"}} on
    /v1/files and /v1/fine_tuning (which must then be complete)."""
    error = body["error"]
    if isinstance(error, dict):
        assert set(error) == {"code", "message", "type", "param"}, error
        assert error["message"] == body["detail"]
        return str(error["code"])
    return str(error)


def add_job_with_status(
    settings: Settings,
    status: str,
    queue: str,
    *,
    key: str = KEY_A,
    variant: str = "lora",
) -> str:
    """A job of `key`'s on the tiny model in the store, already in `status` on `queue`
    (for endpoints that act on a job's state: merge, try)."""
    from sqlalchemy import update

    from api.security import key_owner
    from loracle.store import jobs as store
    from loracle.store.db import session
    from loracle.store.models import JobRow
    from tests.utils.builders import add_placeholder_file

    job_id = store.new_id("job")
    with session(settings.resolved_database_url) as s:
        store.add_job(
            s,
            id=job_id,
            owner=key_owner(f"Bearer {key}", settings),
            model="tiny-llama",
            training_file=add_placeholder_file(s),
            variant=variant,
            requested_variant=variant,
            hyperparameters={},
        )
        s.execute(update(JobRow).where(JobRow.id == job_id).values(status=status, queue=queue))
    return job_id
