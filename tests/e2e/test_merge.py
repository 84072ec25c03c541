"""Merge and export end to end, over REST against a real uvicorn + Celery worker on Redis: a
QLoRA job trains, the worker merges it on request (the task on the job's queue), the merged
model downloads as a tar that transformers loads, and a second job trains on it from the
model root by name."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.utils.api import error_code
from tests.utils.service import Service, wait_for

pytestmark = pytest.mark.e2e

FAST = {"max_steps": 6, "seq_len": 32, "learning_rate": 1e-2}


def test_merge_download_and_train_on_the_merged_model(
    redis_service: Service, tiny_model: Path, train_file: Path, tmp_path: Path
):
    client = redis_service.client()
    file_id = redis_service.upload(train_file)["id"]
    body = {"model": str(tiny_model), "training_file": file_id, "hyperparameters": FAST}
    job = redis_service.submit({**body, "variant": "qlora"})
    answer = client.post(f"/v1/fine_tuning/jobs/{job['id']}/merge")
    assert answer.status_code == 409 and error_code(answer.json()) == "conflict"
    assert redis_service.wait(job["id"])["status"] == "succeeded"

    answer = client.post(
        f"/v1/fine_tuning/jobs/{job['id']}/merge", json={"into_model_root": "tiny-merged-e2e"}
    )
    assert answer.status_code == 202, answer.text
    box: dict = {}

    def merged() -> bool:
        box["merge"] = client.get(f"/v1/jobs/{job['id']}/merge").json()
        return box["merge"]["status"] in ("succeeded", "failed")

    wait_for(merged, 180, f"the merge of {job['id']}", redis_service)
    merge = box["merge"]
    assert merge["status"] == "succeeded", merge
    assert merge["base_weights"] == "nf4-dequantized"
    types = [e["type"] for e in redis_service.events(job["id"])]
    assert types[-3:] == ["merge_requested", "merge_started", "merged"]

    tar = client.get(merge["download_url"])
    assert tar.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
        archive.extractall(tmp_path, filter="data")
    folder = tmp_path / f"{job['id']}-merged"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    AutoTokenizer.from_pretrained(folder)

    again = redis_service.submit({**body, "model": merge["model"], "variant": "lora"})
    done = redis_service.wait(again["id"])
    assert done["status"] == "succeeded", done
