"""Submit real jobs over REST to a real uvicorn + Celery worker on Redis, and check
what they trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.utils.service import Service

pytestmark = pytest.mark.e2e

FAST = {"max_steps": 24, "seq_len": 48, "learning_rate": 5e-3, "logging_steps": 1}

CASES = {
    # variant: (data format, extra request fields)
    "lora": ("text", {}),
    "qlora": ("prompt_completion", {}),
    "dora": ("messages", {}),
    "loraplus": ("text", {}),
    "auto": (
        "prompt_completion",
        {"profile": {"hardware": {"gpu_memory_gib": 2}, "goal": {"priority": "speed"}}},
    ),
}


@pytest.fixture(scope="module")
def finished(redis_service: Service, tiny_model: Path, datasets: dict[str, Path]):
    """All five jobs submitted at once (they queue on the one worker), then awaited."""
    files = {fmt: redis_service.upload(path)["id"] for fmt, path in datasets.items()}
    submitted = {}
    for variant, (fmt, extra) in CASES.items():
        body = {
            "model": str(tiny_model),
            "training_file": files[fmt],
            "variant": variant,
            "hyperparameters": FAST,
            **extra,
        }
        submitted[variant] = redis_service.submit(body)
        assert submitted[variant]["status"] == "queued"
    return {v: redis_service.wait(j["id"]) for v, j in submitted.items()}


def _adapter_dir(service: Service, job_id: str, tmp_path: Path) -> Path:
    out = tmp_path / job_id
    out.mkdir()
    with service.client() as c:
        names = [a["name"] for a in c.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]]
        assert {
            "adapter_config.json",
            "adapter_model.safetensors",
            "plan.json",
            "metrics.json",
            "loss.png",
        } <= set(names)
        for name in names:
            r = c.get(f"/v1/jobs/{job_id}/artifacts/{name}")
            assert r.status_code == 200
            (out / name).write_bytes(r.content)
    return out


def _started(service: Service, job_id: str) -> dict:
    return next(e for e in service.events(job_id) if e["type"] == "started")["data"]


@pytest.mark.parametrize("variant", list(CASES))
def test_job_trains_and_its_adapter_loads(
    variant, finished, redis_service: Service, tiny_model: Path, tmp_path: Path
):
    job = finished[variant]
    assert job["status"] == "succeeded", (job, redis_service.log_tail())
    assert job["step"] == job["total_steps"] == FAST["max_steps"]
    assert job["progress"] == 1.0 and job["measured_peak_gib"] > 0
    assert job["estimated_peak_gib"] is not None

    adapter = _adapter_dir(redis_service, job["id"], tmp_path)
    metrics = json.loads((adapter / "metrics.json").read_text())
    losses = [s["loss"] for s in metrics["losses"]]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 2, 11]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, adapter)
    with torch.no_grad():
        after = tuned(ids).logits
    assert not torch.allclose(before, after, atol=1e-4)

    plan = json.loads((adapter / "plan.json").read_text())
    assert plan["plan"]["variant"] == job["variant"]
    assert {"torch", "transformers", "peft", "bitsandbytes"} <= set(plan["versions"])


def test_qlora_trained_on_4bit_layers(finished, redis_service: Service):
    layers = _started(redis_service, finished["qlora"]["id"])["base_layers"]
    assert set(layers) == {"bitsandbytes.Linear4bit"} and layers["bitsandbytes.Linear4bit"] > 0
    plain = _started(redis_service, finished["lora"]["id"])["base_layers"]
    assert "bitsandbytes.Linear4bit" not in plain


def test_dora_adapter_holds_magnitude_vectors(finished, redis_service: Service, tmp_path: Path):
    adapter = _adapter_dir(redis_service, finished["dora"]["id"], tmp_path)
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any("lora_magnitude_vector" in k for k in keys)
    assert json.loads((adapter / "adapter_config.json").read_text())["use_dora"] is True


def test_loraplus_gave_b_sixteen_times_a(finished, redis_service: Service, tmp_path: Path):
    adapter = _adapter_dir(redis_service, finished["loraplus"]["id"], tmp_path)
    groups = json.loads((adapter / "metrics.json").read_text())["optimizer_groups"]
    lr_a = {g["learning_rate"] for g in groups if g["parameters"].get("lora_A")}
    lr_b = {g["learning_rate"] for g in groups if g["parameters"].get("lora_B")}
    assert len(lr_a) == 1 and len(lr_b) == 1
    assert lr_b.pop() == pytest.approx(16 * lr_a.pop())


def test_auto_stores_the_decision_and_trains_its_choice(finished, redis_service: Service):
    job = finished["auto"]
    assert job["requested_variant"] == "auto"
    assert job["decision"]["variant"] == job["variant"]
    assert job["decision"]["decision_path"][2]["decides"] == "loraplus"
    # what the job left unset came from the advisor's hyperparameters, and was trained with
    defaults = next(e for e in redis_service.events(job["id"]) if e["type"] == "defaults")
    advised = job["decision"]["hyperparameters"]
    assert defaults["data"]["warmup_ratio"] == advised["warmup_ratio"]
    assert job["hyperparameters"]["warmup_ratio"] == advised["warmup_ratio"]
    assert job["hyperparameters"]["learning_rate"] == FAST["learning_rate"]  # the job's own


def test_events_are_ordered_and_complete(finished, redis_service: Service):
    events = redis_service.events(finished["lora"]["id"])
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
    assert steps == list(range(1, FAST["max_steps"] + 1))


def test_listing_filters_and_pages(finished, redis_service: Service):
    with redis_service.client() as c:
        page = c.get("/v1/jobs", params={"limit": 2}).json()
        assert len(page["data"]) == 2 and page["has_more"] is True
        rest = c.get("/v1/jobs", params={"limit": 100, "after": page["data"][-1]["id"]}).json()
        ids = [j["id"] for j in page["data"] + rest["data"]]
        assert len(ids) == len(set(ids))
        created = [j["created_at"] for j in page["data"] + rest["data"]]
        assert created == sorted(created, reverse=True)
        done = c.get("/v1/jobs", params={"status": "succeeded", "limit": 100}).json()["data"]
        assert {j["id"] for j in finished.values()} <= {j["id"] for j in done}
        assert c.get("/v1/jobs", params={"after": "job-nope"}).status_code == 422


def test_cancel_a_running_job_then_the_worker_goes_on(
    finished, redis_service: Service, tiny_model: Path, datasets: dict[str, Path]
):
    file_id = redis_service.upload(datasets["text"])["id"]
    long = redis_service.submit(
        {
            "model": str(tiny_model),
            "training_file": file_id,
            "variant": "lora",
            "hyperparameters": {**FAST, "max_steps": 5000},
        }
    )
    redis_service.wait(long["id"], until=lambda j: j["status"] == "running" and j["step"] >= 2)
    with redis_service.client() as c:
        r = c.post(f"/v1/jobs/{long['id']}/cancel")
        assert r.status_code == 200 and r.json()["cancel_requested"] is True
    job = redis_service.wait(long["id"], timeout=60)
    assert job["status"] == "cancelled" and job["step"] < 5000
    with redis_service.client() as c:
        assert c.post(f"/v1/jobs/{long['id']}/cancel").status_code == 409
    after = redis_service.submit(
        {
            "model": str(tiny_model),
            "training_file": file_id,
            "variant": "lora",
            "hyperparameters": {**FAST, "max_steps": 3},
        }
    )
    assert redis_service.wait(after["id"])["status"] == "succeeded"


def test_cancel_a_queued_job_never_starts(
    finished, redis_service: Service, tiny_model: Path, datasets: dict[str, Path]
):
    file_id = redis_service.upload(datasets["text"])["id"]
    body = {
        "model": str(tiny_model),
        "training_file": file_id,
        "variant": "lora",
        "hyperparameters": {**FAST, "max_steps": 400},
    }
    blocker = redis_service.submit(body)
    queued = redis_service.submit({**body, "hyperparameters": {**FAST, "max_steps": 3}})
    with redis_service.client() as c:
        r = c.post(f"/v1/jobs/{queued['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        c.post(f"/v1/jobs/{blocker['id']}/cancel")
    redis_service.wait(blocker["id"])
    job = redis_service.job(queued["id"])
    assert job["status"] == "cancelled" and job["started_at"] is None


def test_failing_job_ends_failed_and_the_worker_goes_on(
    finished, redis_service: Service, tiny_model: Path, datasets: dict[str, Path]
):
    # A model whose weights file is cut short: it passes every check at submission
    # (config.json, safetensors present, inside the roots) and breaks when loaded.
    broken = tiny_model.parent / "broken-weights"
    if not broken.exists():
        shutil.copytree(tiny_model, broken)
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:200])
    file_id = redis_service.upload(datasets["text"])["id"]
    bad = redis_service.submit(
        {"model": str(broken), "training_file": file_id, "variant": "lora", "hyperparameters": FAST}
    )
    good = redis_service.submit(
        {
            "model": str(tiny_model),
            "training_file": file_id,
            "variant": "lora",
            "hyperparameters": {**FAST, "max_steps": 3},
        }
    )
    failed = redis_service.wait(bad["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["type"] and failed["error"]["message"]
    assert any(
        e["type"] == "status" and e["data"]["status"] == "failed"
        for e in redis_service.events(bad["id"])
    )
    assert redis_service.wait(good["id"])["status"] == "succeeded"


def test_malformed_file_is_422_with_the_line_number(redis_service: Service, tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": 3}\nnot json\n')
    with redis_service.client() as c:
        r = c.post(
            "/v1/files",
            files={"file": (path.name, path.read_bytes())},
            data={"purpose": "fine-tune"},
        )
    assert r.status_code == 422
    messages = [p["message"] for p in r.json()["problems"]]
    assert any(m.startswith("line 3") for m in messages)
    assert any(m.startswith("line 4") for m in messages)


def test_unknown_ids_404_and_missing_file_422(redis_service: Service, tiny_model: Path):
    with redis_service.client() as c:
        assert c.get("/v1/jobs/job-nope").status_code == 404
        assert c.get("/v1/jobs/job-nope/events").status_code == 404
        assert c.post("/v1/jobs/job-nope/cancel").status_code == 404
        r = c.post(
            "/v1/jobs",
            json={"model": str(tiny_model), "training_file": "file-nope", "variant": "lora"},
        )
        assert r.status_code == 422 and r.json()["problems"][0]["field"] == "training_file"


def test_files_report_token_lengths_for_the_jobs_model(finished, redis_service: Service):
    job = finished["lora"]
    with redis_service.client() as c:
        stats = c.get(f"/v1/files/{job['training_file']}").json()["token_stats"]
    lengths = stats[job["model"]]
    assert 0 < lengths["min"] <= lengths["median"] <= lengths["max"]
    data = [e for e in redis_service.events(job["id"]) if e["type"] == "data"]
    assert data and data[0]["data"]["token_stats"] == lengths
