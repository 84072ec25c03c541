"""A job cancelled while running keeps its partial adapter and its last checkpoint as
artifacts, downloadable through the API, and says which steps it kept. Real API and worker
processes on the tiny model; everything is read over REST."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.utils.service import Service
from worker.checkpoints import CHECKPOINT_MARKER

pytestmark = pytest.mark.e2e


def test_a_cancelled_job_keeps_its_partial_adapter_and_last_checkpoint_downloadable(
    redis_service: Service, tiny_model: Path, train_file: Path
):
    file_id = redis_service.upload(train_file)["id"]
    job = redis_service.submit(
        {
            "model": str(tiny_model),
            "training_file": file_id,
            "variant": "lora",
            "hyperparameters": {
                "max_steps": 5000,
                "gradient_accumulation_steps": 4,
                "seq_len": 48,
                "checkpoint_steps": 3,
                "logging_steps": 1,
            },
        }
    )
    redis_service.wait(job["id"], until=lambda j: j["status"] == "running" and j["step"] >= 7)
    with redis_service.client() as c:
        assert c.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    done = redis_service.wait(job["id"], timeout=60)
    assert done["status"] == "cancelled", redis_service.log_tail()
    step = done["step"]
    kept_step = step - step % 3  # the newest checkpoint: every 3 steps
    archive = f"checkpoint-{kept_step}.tar"

    outcome = done["cancel_outcome"]
    assert outcome == (
        f"cancelled while running, at step {step}; kept the adapter of step {step} and "
        f"{archive} (step {kept_step}, to resume from) as the job's artifacts"
    )
    events = redis_service.events(job["id"])
    (cancelled,) = [e for e in events if e["type"] == "cancelled"]
    assert cancelled["message"].startswith(f"training stopped for the cancel at step {step}; ")
    assert events[-1]["message"] == outcome

    with redis_service.client() as c:
        names = {a["name"] for a in c.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]}
        assert {"adapter_model.safetensors", "adapter_config.json", archive} <= names, names
        assert {"plan.json", "metrics.json"} <= names
        metrics = c.get(f"/v1/jobs/{job['id']}/artifacts/metrics.json").json()
        r = c.get(f"/v1/jobs/{job['id']}/artifacts/{archive}")
        assert r.status_code == 200
    assert metrics["status"] == "cancelled" and metrics["steps"] == step
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        files = set(tar.getnames())
        state = tar.extractfile(f"checkpoint-{kept_step}/trainer_state.json")
        assert state is not None
        assert json.loads(state.read())["global_step"] == kept_step
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", CHECKPOINT_MARKER):
        assert f"checkpoint-{kept_step}/{name}" in files, files
