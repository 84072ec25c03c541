"""POST /v1/fine_tuning/jobs/{id}/merge and what follows: the API records the request and
sends a task, a worker merges (worker.service.execute_merge, called here in-process as the
task would), and the merged model is followed, downloaded as a tar archive, and optionally
written into the first model root. The adapter is trained for real on the tiny model."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from api.deps import get_queue
from loracle import jobfiles
from loracle.plan import load_plan
from loracle.queue import MERGE_JOB
from loracle.store import jobs as store
from tests.utils.api import (
    KEY_A,
    KEY_B,
    add_job_with_status,
    client_for,
    error_code,
    settings_for,
)
from tests.utils.builders import plan_dict
from worker.service import execute_merge
from worker.training import run_training

JOB_QUEUE = "loracle.cpu-test.x1"


class RecordingQueue:
    """Stands in for Celery: keeps what the API sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], str]] = []

    def send_task(self, name: str, args: list[Any], queue: str) -> None:
        self.sent.append((name, args, queue))


@pytest.fixture(scope="module")
def settings(tmp_path_factory, model_root):
    return settings_for(tmp_path_factory.mktemp("merge-api"), model_roots=str(model_root))


@pytest.fixture(scope="module")
def queue():
    return RecordingQueue()


@pytest.fixture(scope="module")
def clients(settings, queue):
    a, b = client_for(settings, KEY_A), client_for(settings, KEY_B)
    for c in (a, b):
        c.app.dependency_overrides[get_queue] = lambda: queue  # type: ignore[attr-defined]
    with a, b:
        yield a, b


def add_job(settings, status: str) -> str:
    """A QLoRA job of key A's in the store, with the given status."""
    return add_job_with_status(settings, status, JOB_QUEUE, variant="qlora")


@pytest.fixture(scope="module")
def succeeded(settings, tiny_model, train_file):
    """A succeeded QLoRA job whose adapter lies where a worker leaves it."""
    job_id = add_job(settings, store.SUCCEEDED)
    plan = load_plan(
        plan_dict(
            tiny_model,
            train_file,
            jobfiles.job_dir(settings.data_dir, job_id),
            max_steps=6,
            learning_rate=2e-2,
            variant="qlora",
            precision="fp32",  # the merge's dtype below, on any device
        )
    )
    assert run_training(plan).status == "succeeded"
    return job_id


def events(client, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/jobs/{job_id}/events", params={"limit": 100}).json()["data"]


def test_only_a_succeeded_job_of_ones_own_merges(clients, settings, succeeded, queue):
    a, b = clients
    running = add_job(settings, store.RUNNING)
    answer = a.post(f"/v1/fine_tuning/jobs/{running}/merge")
    assert answer.status_code == 409 and error_code(answer.json()) == "conflict"
    assert "only a succeeded job" in answer.json()["detail"]
    answer = b.post(f"/v1/fine_tuning/jobs/{succeeded}/merge")
    assert answer.status_code == 404 and error_code(answer.json()) == "not_found"
    answer = a.post(f"/v1/jobs/{succeeded}/merge", json={"into_model_root": "../elsewhere"})
    assert answer.status_code == 422
    assert a.get(f"/v1/jobs/{succeeded}/merge/content").status_code == 404
    assert queue.sent == []


def test_a_merge_runs_on_a_worker_and_downloads_as_a_tar(
    clients, settings, succeeded, queue, model_root
):
    a, _ = clients
    answer = a.post(
        f"/v1/fine_tuning/jobs/{succeeded}/merge", json={"into_model_root": "tiny-merged-api"}
    )
    assert answer.status_code == 202, answer.text
    merge = answer.json()
    assert merge["status"] == "queued" and merge["into_model_root"] == "tiny-merged-api"
    # Sent to the job's own queue; nothing merged in the API process.
    assert queue.sent[-1] == (MERGE_JOB, [succeeded], JOB_QUEUE)
    assert not jobfiles.merged_dir(settings.data_dir, succeeded).exists()
    again = a.post(f"/v1/jobs/{succeeded}/merge")
    assert again.status_code == 409 and "already has a merge queued" in again.json()["detail"]

    assert execute_merge(succeeded, settings) == "succeeded"
    assert execute_merge(succeeded, settings) == "skipped"  # a second delivery
    merge = a.get(f"/v1/jobs/{succeeded}/merge").json()
    assert merge["status"] == "succeeded", merge
    assert merge["base_weights"] == "nf4-dequantized" and merge["dtype"] == "fp32"
    assert "model.safetensors" in merge["files"] and "config.json" in merge["files"]
    assert merge["download_url"] == f"/v1/fine_tuning/jobs/{succeeded}/merge/content"
    assert merge["model"] == "tiny-merged-api"
    assert merge["model_root_path"] == str(model_root.resolve() / "tiny-merged-api")

    kinds = [e["type"] for e in events(a, succeeded)]
    assert kinds[-3:] == ["merge_requested", "merge_started", "merged"]
    merged = events(a, succeeded)[-1]["data"]
    assert merged["path"] == str(jobfiles.merged_dir(settings.data_dir, succeeded))
    assert merged["bytes"] == merge["bytes"] > 0

    tar = a.get(merge["download_url"])
    assert tar.status_code == 200 and tar.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
        names = archive.getnames()
        config = json.load(archive.extractfile(f"{succeeded}-merged/config.json"))  # type: ignore[arg-type]
    assert f"{succeeded}-merged/model.safetensors" in names
    assert f"{succeeded}-merged/loracle-merge.json" in names
    assert "quantization_config" not in config
    in_root = Path(merge["model_root_path"])
    assert (in_root / "model.safetensors").is_file()
    assert json.loads((in_root / "loracle-merge.json").read_text())["job_id"] == succeeded

    # Merging the same job again into its own earlier output replaces it.
    again = a.post(f"/v1/jobs/{succeeded}/merge", json={"into_model_root": "tiny-merged-api"})
    assert again.status_code == 202
    assert execute_merge(succeeded, settings) == "succeeded"


def test_a_failed_merge_is_an_event_with_an_error_code(clients, settings, succeeded, model_root):
    a, _ = clients
    (model_root / "someone-elses-model").mkdir(exist_ok=True)
    answer = a.post(f"/v1/jobs/{succeeded}/merge", json={"into_model_root": "someone-elses-model"})
    assert answer.status_code == 202
    assert execute_merge(succeeded, settings) == "failed"
    merge = a.get(f"/v1/jobs/{succeeded}/merge").json()
    assert merge["status"] == "failed" and merge["error"]["code"] == "model_root_taken"
    last = events(a, succeeded)[-1]
    assert last["type"] == "merge_failed" and last["level"] == "error"
    assert last["data"]["error"] == "model_root_taken"
    assert not any((model_root / "someone-elses-model").iterdir())  # left alone


def test_a_worker_without_the_api_data_dir_refuses_the_merge(clients, settings, succeeded):
    a, _ = clients
    assert a.post(f"/v1/jobs/{succeeded}/merge").status_code == 202
    remote = settings.model_copy(update={"api_url": "http://api.invalid:8000"})
    assert execute_merge(succeeded, remote) == "failed"
    merge = a.get(f"/v1/jobs/{succeeded}/merge").json()
    assert merge["error"]["code"] == "remote_worker_unsupported", merge


class DownBroker:
    def send_task(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")


def test_a_merge_the_broker_cannot_take_is_a_503_and_a_failed_merge(settings, succeeded):
    with client_for(settings, KEY_A) as a:
        a.app.dependency_overrides[get_queue] = lambda: DownBroker()  # type: ignore[attr-defined]
        answer = a.post(f"/v1/jobs/{succeeded}/merge")
        assert answer.status_code == 503 and error_code(answer.json()) == "broker_unavailable"
        merge = a.get(f"/v1/jobs/{succeeded}/merge").json()
        assert merge["status"] == "failed" and merge["error"]["code"] == "broker_unavailable"
        assert a.post(f"/v1/jobs/{succeeded}/merge").status_code == 503  # may ask again at once
