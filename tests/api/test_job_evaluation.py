"""GET of one job shows the base-vs-adapter comparison its worker recorded (`evaluation`), in
process, on a real job store: the worker's own hooks write the event, the API reads it. A real
run end to end, with the console's table: tests/console/test_evaluation.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.security import digest
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.db import session
from tests.utils.api import KEY_A, client_for, settings_for
from tests.utils.builders import add_running_job, jsonl_bytes
from worker.service import StoreHooks

# What worker.evaluation records for a prompt/completion validation file.
COMPARISON: dict[str, Any] = {
    "validation_rows": 16,
    "tokens": 48,
    "format": "prompt_completion",
    "base": {
        "loss": 5.97,
        "perplexity": 391.0,
        "exact_match": {"matched": 0, "rows": 16, "skipped": 0, "rate": 0.0},
    },
    "adapter": {
        "loss": 4.71,
        "perplexity": 111.0,
        "exact_match": {"matched": 16, "rows": 16, "skipped": 0, "rate": 1.0},
    },
    "delta": {"loss": -1.26, "perplexity": -280.0, "exact_match": 1.0},
    "max_match_rows": 64,
    "max_new_tokens": 64,
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return settings_for(tmp_path_factory.mktemp("job-evaluation"))


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with client_for(settings) as c:
        yield c


def finished_job(settings: Settings, client: TestClient, evaluation: dict | None) -> str:
    """A job that a test 'worker' ran to success through the worker's hooks, having sent
    this `evaluation` event (none when None)."""
    r = client.post(
        "/v1/files",
        files={"file": ("t.jsonl", jsonl_bytes({"text": "one"}), "application/jsonl")},
        data={"purpose": "fine-tune"},
    )
    assert r.status_code == 201, r.text
    job_id, token = add_running_job(settings.resolved_database_url, r.json()["id"], digest(KEY_A))
    hooks = StoreHooks(settings, job_id, token)
    try:
        if evaluation is not None:
            hooks.on_event("evaluation", {**evaluation, "message": "validation: ..."})
        hooks.on_event("finished", {"step": 3})
    finally:
        hooks.close()
    with session(settings.resolved_database_url) as s:
        assert store.finish(s, job_id, token, store.SUCCEEDED, "training finished")
    return job_id


@pytest.mark.parametrize("prefix", ["/v1/fine_tuning/jobs", "/v1/jobs"])
def test_get_job_shows_the_comparison_the_worker_recorded(
    settings: Settings, client: TestClient, prefix: str
) -> None:
    job_id = finished_job(settings, client, COMPARISON)
    r = client.get(f"{prefix}/{job_id}")
    assert r.status_code == 200, r.text
    assert r.json()["evaluation"] == COMPARISON  # the event's data, its message left out
    events = client.get(f"{prefix}/{job_id}/events").json()["data"]
    (event,) = [e for e in events if e["type"] == "evaluation"]
    assert event["message"] == "validation: ..." and event["level"] == "info"
    # Lists leave it out: it is read for one job at a time.
    listed = client.get(prefix).json()["data"]
    assert [j["evaluation"] for j in listed if j["id"] == job_id] == [None]


def test_a_failed_or_skipped_comparison_shows_as_recorded(
    settings: Settings, client: TestClient
) -> None:
    failed = finished_job(settings, client, {"error": "RuntimeError: out of memory"})
    job = client.get(f"/v1/jobs/{failed}").json()
    assert job["status"] == "succeeded"
    assert job["evaluation"] == {"error": "RuntimeError: out of memory"}
    skipped = finished_job(settings, client, {"skipped": "several ranks"})
    assert client.get(f"/v1/jobs/{skipped}").json()["evaluation"] == {"skipped": "several ranks"}


def test_a_job_without_validation_has_no_evaluation(settings: Settings, client: TestClient) -> None:
    job_id = finished_job(settings, client, None)
    assert client.get(f"/v1/jobs/{job_id}").json()["evaluation"] is None


def test_evaluation_is_documented_in_the_openapi_schema(client: TestClient) -> None:
    field = client.get("/openapi.json").json()["components"]["schemas"]["JobOut"]["properties"][
        "evaluation"
    ]
    for word in ("base", "adapter", "perplexity", "exact_match", "metrics.json", "delta"):
        assert word in field["description"]
