"""A worker that cannot get a hub model fails the job with the codes the API answers at
submission (loracle/hub.py), never with transformers' "We couldn't connect" alone. Nothing is
downloaded: the hub's address refuses connections (tests/conftest.py), or offline mode is on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.db import session
from tests.utils.builders import add_stored_file
from tests.utils.service import Service
from worker.service import execute_job

FIXES = ("LORACLE_MODEL_ROOTS", "HF_HOME", "HF_HUB_OFFLINE=1")


def _hub_cache_with_config(home: Path, repo_id: str) -> None:
    """A hub cache (under HF_HOME) that holds `repo_id`'s config.json only: enough for the
    API's offline check, not for a worker to load the model."""
    folder = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama"}))


@pytest.mark.e2e
def test_an_offline_worker_without_the_model_in_its_cache_fails_the_job_model_not_cached(
    tmp_path: Path, model_root: Path, train_file: Path
):
    # The API's machine has the model in its cache and accepts the job; the worker's
    # machine has an empty cache (another HF_HOME). Both run offline.
    repo_id = "acme/tiny-offline"
    api_home, worker_home = tmp_path / "api-hf", tmp_path / "worker-hf"
    _hub_cache_with_config(api_home, repo_id)
    worker_home.mkdir()
    service = Service.create(tmp_path / "svc", model_root, HF_HUB_OFFLINE="1")
    service.env["HF_HOME"] = str(api_home)
    service.start_api()
    try:
        service.env["HF_HOME"] = str(worker_home)
        service.start_worker()
        file_id = service.upload(train_file)["id"]
        job = service.submit(
            {
                "model": repo_id,
                "training_file": file_id,
                "variant": "lora",
                "hyperparameters": {"max_steps": 2, "seq_len": 32},
            }
        )
        done = service.wait(job["id"], timeout=180)
        assert done["status"] == "failed", service.log_tail()
        assert done["error"]["type"] == "model_not_cached", done["error"]
        message = done["error"]["message"]
        assert all(fix in message for fix in FIXES), message
        assert message.startswith("offline mode is on (HF_HUB_OFFLINE=1) and model "), message
        assert str(worker_home / "hub") in message, "names the cache it looked in"
    finally:
        service.stop()


def test_a_worker_that_cannot_reach_the_hub_fails_the_job_hub_unreachable(
    tmp_path: Path, train_file: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    settings = Settings(data_dir=tmp_path / "data", auth_disabled=True)
    url = settings.resolved_database_url
    with session(url) as s:
        file_id = add_stored_file(s, settings, train_file, rows=1)
        job_id = store.new_id("job")
        store.add_job(
            s,
            id=job_id,
            owner=None,
            model="acme/not-reachable",
            training_file=file_id,
            variant="lora",
            requested_variant="lora",
            hyperparameters={"max_steps": 2},
        )
    # The hub's address refuses connections (tests/conftest.py): no download can happen.
    assert execute_job(job_id, settings) == "failed"
    with session(url) as s:
        job = store.get_job(s, job_id, any_owner=True)
        assert job is not None
        assert job.error_type == "hub_unreachable", job.error_message
        message = job.error_message or ""
    assert message.startswith("the hub (http://127.0.0.1:"), message
    assert "could not be reached to check model 'acme/not-reachable' within 5 s" in message
    assert all(fix in message for fix in FIXES), message
