"""Submit real jobs over REST to a real uvicorn + Celery worker on Redis, and check
what they trained."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from tests.utils.api import error_code
from tests.utils.service import (
    Service,
    assert_adapter_changes_logits,
    assert_loss_fell,
    download_artifacts,
)

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
    return download_artifacts(service, job_id, tmp_path)


def _started(service: Service, job_id: str) -> dict:
    return next(e for e in service.events(job_id) if e["type"] == "started")["data"]


@pytest.mark.parametrize("variant", list(CASES))
def test_job_trains_and_its_adapter_loads(
    variant, finished, redis_service: Service, tiny_model: Path, tmp_path: Path
):
    job = finished[variant]
    assert job["status"] == "succeeded", (job, redis_service.log_tail())
    assert job["step"] == job["total_steps"] == FAST["max_steps"]
    assert job["progress"] == 1.0 and job["memory"]["measured"]["rss_growth_gib"] > 0
    assert job["estimated_peak_gib"] is not None

    adapter = _adapter_dir(redis_service, job["id"], tmp_path)
    metrics = json.loads((adapter / "metrics.json").read_text())
    assert_loss_fell([s["loss"] for s in metrics["losses"]])
    assert_adapter_changes_logits(tiny_model, adapter)

    plan = json.loads((adapter / "plan.json").read_text())
    assert plan["plan"]["variant"] == job["variant"]
    assert {"torch", "transformers", "peft", "bitsandbytes"} <= set(plan["versions"])


def _last_metrics(service: Service, job_id: str) -> dict[str, Any]:
    return [e for e in service.events(job_id) if e["type"] == "metrics"][-1]["data"]


@pytest.mark.parametrize("variant", list(CASES))
def test_succeeded_job_reports_times_loss_speed_and_memory(
    variant, finished, redis_service: Service
):
    job = finished[variant]
    assert job["status"] == "succeeded", (job, redis_service.log_tail())
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    last = _last_metrics(redis_service, job["id"])
    assert last["step"] == job["total_steps"]
    assert isinstance(job["loss"], float) and math.isfinite(job["loss"])
    assert job["loss"] == last["loss"]
    assert job["tokens_per_second"] > 0
    assert job["eta_seconds"] == 0 and job["progress"] == 1
    assert job["error"] is None
    # The advisor's estimate (for a CUDA card) beside what the CPU run measured, each named
    # for what it is and not compared: a CPU run has no allocated peak to set beside it.
    assert job["estimated_peak_gib"] > 0
    assert job["estimated_peak_gib"] == job["estimate"]["peak_allocated_gib"]
    memory = job["memory"]
    assert memory["estimated_peak_allocated_gib"] == job["estimated_peak_gib"]
    assert memory["estimated_total_gib"] == job["estimate"]["total_gib"]
    assert memory["estimated_for"].startswith("a CUDA card, placed on class cpu-")
    assert memory["comparable"] is False and "not compared" in memory["note"]
    measured = memory["measured"]
    assert measured["device"] == job["device"] == "cpu"
    assert job["measured_peak_gib"] is None and measured["peak_allocated_gib"] is None
    assert measured["rss_growth_gib"] > 0 and "RSS growth" in measured["measures"]
    assert measured["device_total_gib"] > 1 and measured["device_name"] == job["device_name"]
    assert job["precision"] == "fp32" == job["measured_peak"]["precision"]
    assert {"torch", "transformers", "peft", "bitsandbytes", "python"} <= set(measured["libraries"])
    # And the job said so while it ran: a warning event, the first thing a user sees.
    warnings = [e["message"] for e in redis_service.events(job["id"]) if e["type"] == "warning"]
    assert any(
        m.startswith("no CUDA GPU on this worker: the job runs on the CPU in fp32")
        for m in warnings
    ), warnings


def _assert_mid_run(job: dict[str, Any]) -> None:
    assert job["status"] == "running", job
    # What it runs on is known from its start; what it measured, at its end.
    assert job["device"] == "cpu" and job["precision"] == "fp32", job
    assert job["memory"]["measured"]["measures"] is None
    assert 0 < job["step"] < job["total_steps"]
    assert 0 < job["progress"] < 1
    assert job["progress"] == pytest.approx(job["step"] / job["total_steps"], abs=1e-4)
    assert job["eta_seconds"] > 0
    assert job["tokens_per_second"] > 0
    assert math.isfinite(job["loss"])
    assert job["started_at"] is not None and job["finished_at"] is None
    assert job["created_at"] <= job["started_at"]


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
    running = redis_service.wait(
        long["id"], until=lambda j: j["status"] == "running" and j["step"] >= 2
    )
    _assert_mid_run(running)
    assert running["total_steps"] == 5000
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
    done = redis_service.wait(after["id"])
    assert done["status"] == "succeeded"
    # Each job trains in a fresh pool process: no memory of the cancelled one carries over.
    assert done["worker"] != redis_service.job(long["id"])["worker"]


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


def _broken_model(tiny_model: Path) -> Path:
    """A model whose weights file is cut short: it passes every check at submission
    (config.json, safetensors present, inside the roots) and breaks when loaded."""
    broken = tiny_model.parent / "broken-weights"
    if not broken.exists():
        shutil.copytree(tiny_model, broken)
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:200])
    return broken


def test_failing_job_ends_failed_and_the_worker_goes_on(
    finished, redis_service: Service, tiny_model: Path, datasets: dict[str, Path]
):
    broken = _broken_model(tiny_model)
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


def _all_jobs(service: Service, **params: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    with service.client() as c:
        while True:
            after = {"after": jobs[-1]["id"]} if jobs else {}
            r = c.get("/v1/jobs", params={"limit": 100, **params, **after})
            assert r.status_code == 200, r.text
            jobs += r.json()["data"]
            if not r.json()["has_more"]:
                return jobs


STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def test_status_filter_returns_exactly_the_jobs_in_each_state(
    finished, redis_service: Service, tiny_model: Path, datasets: dict[str, Path]
):
    """One job in each state at once; each filter value lists those and no others."""
    file_id = redis_service.upload(datasets["text"])["id"]
    body = {"model": str(tiny_model), "training_file": file_id, "variant": "lora"}
    mine = {"succeeded": finished["lora"]["id"]}
    failed = redis_service.submit(
        {**body, "model": str(_broken_model(tiny_model)), "hyperparameters": FAST}
    )
    assert redis_service.wait(failed["id"])["status"] == "failed"
    mine["failed"] = failed["id"]
    blocker = redis_service.submit({**body, "hyperparameters": {**FAST, "max_steps": 5000}})
    short = {**body, "hyperparameters": {**FAST, "max_steps": 3}}
    queued, cancelled = redis_service.submit(short), redis_service.submit(short)
    try:
        redis_service.wait(blocker["id"], until=lambda j: j["status"] == "running")
        mine["running"], mine["queued"] = blocker["id"], queued["id"]
        with redis_service.client() as c:
            assert c.post(f"/v1/jobs/{cancelled['id']}/cancel").json()["status"] == "cancelled"
        mine["cancelled"] = cancelled["id"]

        everything = _all_jobs(redis_service)
        by_status = {
            status: {j["id"] for j in everything if j["status"] == status} for status in STATUSES
        }
        for status in STATUSES:
            assert mine[status] in by_status[status], (status, by_status)
        for status in STATUSES:
            listed = _all_jobs(redis_service, status=status)
            assert {j["status"] for j in listed} == {status}
            assert {j["id"] for j in listed} == by_status[status], status
        assert sum(len(ids) for ids in by_status.values()) == len(everything)

        with redis_service.client() as c:
            r = c.get("/v1/jobs", params={"status": "finished"})
        assert r.status_code == 422, r.text
        (problem,) = r.json()["problems"]
        assert problem["field"] == "status" and "finished" in problem["message"]
    finally:
        with redis_service.client() as c:
            for job in (queued, blocker):
                c.post(f"/v1/jobs/{job['id']}/cancel")
        redis_service.wait(blocker["id"])
    assert redis_service.job(queued["id"])["started_at"] is None


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
        for path in ("artifacts", "artifacts/adapter_config.json"):
            r = c.get(f"/v1/jobs/job-nope/{path}")
            assert r.status_code == 404 and error_code(r.json()) == "not_found", (path, r.text)
        r = c.post(
            "/v1/jobs",
            json={"model": str(tiny_model), "training_file": "file-nope", "variant": "lora"},
        )
        assert r.status_code == 422 and r.json()["problems"][0]["field"] == "training_file"


def test_a_job_on_a_file_that_was_never_uploaded_is_422(
    redis_service: Service, tiny_model: Path, datasets: dict[str, Path]
):
    real = redis_service.upload(datasets["text"])["id"]
    unknown = "file-" + "0" * 24  # well-formed: the store, not the schema, must refuse it
    body = {"model": str(tiny_model), "variant": "lora"}
    with redis_service.client() as c:
        before = len(_all_jobs(redis_service))
        r = c.post("/v1/jobs", json={**body, "training_file": real, "validation_file": unknown})
        assert r.status_code == 422, r.text
        (problem,) = r.json()["problems"]
        assert problem["field"] == "validation_file" and problem["value"] == unknown
        assert "POST /v1/files" in problem["message"]
        r = c.post("/v1/jobs", json={**body, "training_file": unknown, "validation_file": unknown})
        assert r.status_code == 422, r.text
        fields = [p["field"] for p in r.json()["problems"]]
        assert fields == ["training_file", "validation_file"]  # all problems, at once
        assert len(_all_jobs(redis_service)) == before  # nothing was stored
        ok = c.post(
            "/v1/jobs",
            json={
                **body,
                "training_file": real,
                "validation_file": real,
                "hyperparameters": {**FAST, "max_steps": 2},
            },
        )
        assert ok.status_code == 201, ok.text
        c.post(f"/v1/jobs/{ok.json()['id']}/cancel")
    assert redis_service.wait(ok.json()["id"])["status"] in ("cancelled", "succeeded")


def test_cancelling_a_succeeded_job_is_409_and_leaves_it(finished, redis_service: Service):
    job = finished["dora"]
    with redis_service.client() as c:
        r = c.post(f"/v1/jobs/{job['id']}/cancel")
        assert r.status_code == 409 and error_code(r.json()) == "conflict", r.text
        assert "succeeded" in r.json()["detail"]
        r = c.get(f"/v1/jobs/{job['id']}/artifacts/no-such-file.bin")
        assert r.status_code == 404 and error_code(r.json()) == "not_found", r.text
    after = redis_service.job(job["id"])
    assert after["status"] == "succeeded" and after["cancel_requested"] is False
    assert after["finished_at"] == job["finished_at"]


def test_files_report_token_lengths_for_the_jobs_model(finished, redis_service: Service):
    job = finished["lora"]
    with redis_service.client() as c:
        stats = c.get(f"/v1/files/{job['training_file']}").json()["token_stats"]
    lengths = stats[job["model"]]
    assert 0 < lengths["min"] <= lengths["median"] <= lengths["max"]
    data = [e for e in redis_service.events(job["id"]) if e["type"] == "data"]
    assert data and data[0]["data"]["token_stats"] == lengths
