"""A job on 2 cards through the REST API and a real worker: a CPU worker registered with 2
"cards" (`loracle worker --cards 2 --memory-gib 8`, for CPU workers and tests) consumes its
class's `.x2` queue and runs a `resources.gpus: 2` job as 2 ranks under torchrun (gloo).
Redis as the broker and the default store, as in the other e2e tests: nothing is mocked."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.service import Service, flush_redis_db

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_card_service(
    tmp_path_factory: pytest.TempPathFactory, model_root: Path, tiny_model: Path, redis_db: int
) -> Iterator[Service]:
    service = Service.create(
        tmp_path_factory.mktemp("two-cards"),
        model_root,
        LORACLE_BROKER_URL=f"redis://127.0.0.1:6379/{redis_db}",
    )
    service.start_api()
    service.start_worker("--cards", "2", "--memory-gib", "8")
    try:
        yield service
    finally:
        service.stop()
        flush_redis_db(redis_db)


def _submit(service: Service, tiny_model: Path, train_file: Path, **hp: object) -> dict:
    file_id = service.upload(train_file)["id"]
    return service.submit(
        {
            "model": str(tiny_model),
            "training_file": file_id,
            "variant": "lora",
            "resources": {"gpus": 2},
            "hyperparameters": {"seq_len": 32, "micro_batch_size": 2, **hp},
        }
    )


def _rank_lines(service: Service, job_id: str) -> list[dict]:
    log = service.data_dir / "jobs" / job_id / "distributed" / "torchrun.log"
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith('{"rank"')]
    return sorted(lines, key=lambda line: line["rank"])


def _wait_registered(service: Service) -> dict:
    from tests.utils.service import wait_for

    box: dict = {}

    def registered() -> bool:
        workers = service.client().get("/v1/workers").json()["data"]
        box["w"] = workers[0] if workers else None
        return bool(workers)

    wait_for(registered, 90, "the 2-card worker to register", service)
    return dict(box["w"])


def test_a_two_card_job_runs_as_two_ranks_and_rank_0_reports(
    two_card_service: Service, tiny_model: Path, train_file: Path
):
    service = two_card_service
    worker = _wait_registered(service)
    assert len(worker["cards"]) == 2
    assert any(q.endswith(".x2") for q in worker["queues"]), worker["queues"]

    job = _submit(service, tiny_model, train_file, max_steps=6, learning_rate=1e-2)
    assert job["placement"]["gpus"] == 2 and job["placement"]["queue"].endswith(".x2")
    # the tiny model fits one 8 GiB budget: DDP, as the estimate for 2 cards says
    assert job["placement"]["strategy"] == "ddp"
    done = service.wait(job["id"], timeout=300)
    assert done["status"] == "succeeded", service.log_tail()
    assert done["step"] == 6
    events = service.events(job["id"])
    types = [e["type"] for e in events]
    # rank 0 alone writes to the store: one start, one metrics event per step, one finish
    assert types.count("started") == 1 and types.count("finished") == 1, types
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == list(range(1, 7))
    assert _rank_lines(service, job["id"]) == [
        {"rank": 0, "status": "succeeded", "steps": 6, "adapter": True},
        {"rank": 1, "status": "succeeded", "steps": 6, "adapter": False},
    ]
    names = [
        a["name"] for a in service.client().get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
    ]
    assert names.count("adapter_model.safetensors") == 1


def test_a_cancel_stops_every_rank_at_the_same_step(
    two_card_service: Service, tiny_model: Path, train_file: Path
):
    service = two_card_service
    _wait_registered(service)
    job = _submit(service, tiny_model, train_file, max_steps=2000, gradient_accumulation_steps=2)
    service.wait(job["id"], until=lambda j: j["status"] == "running" and j["step"] >= 3)
    r = service.client().post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200, r.text
    done = service.wait(job["id"], timeout=120)
    assert done["status"] == "cancelled", service.log_tail()
    assert 3 <= done["step"] < 2000
    ranks = _rank_lines(service, job["id"])
    # Both ranks ended the run (torchrun exited: the job was recorded), at the same step.
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {r["status"] for r in ranks} == {"cancelled"}
    assert ranks[0]["steps"] == ranks[1]["steps"] == done["step"]
    # what a cancelled job keeps (its adapter so far), written by rank 0 alone
    assert [r["adapter"] for r in ranks] == [True, False]
    kept = service.data_dir / "jobs" / job["id"] / "adapter"
    assert (kept / "adapter_model.safetensors").is_file()


def test_a_killed_rank_fails_the_job_at_once_naming_the_rank(
    tmp_path: Path, model_root: Path, tiny_model: Path, train_file: Path, fresh_redis_db: int
):
    service = Service.create(
        tmp_path,
        model_root,
        LORACLE_BROKER_URL=f"redis://127.0.0.1:6379/{fresh_redis_db}",
        LORACLE_FAULT_KILL_RANK="1:3",  # rank 1 SIGKILLs itself once step 3 is logged
    )
    service.start_api()
    service.start_worker("--cards", "2", "--memory-gib", "8")
    try:
        _wait_registered(service)
        job = _submit(service, tiny_model, train_file, max_steps=2000, checkpoint_steps=2)
        # The kill comes at step 3: the job may fail before a poll sees it running there.
        service.wait(
            job["id"],
            until=lambda j: (
                j["status"] == "failed" or (j["status"] == "running" and j["step"] >= 3)
            ),
        )
        started = time.monotonic()
        done = service.wait(job["id"], timeout=120)
        # no hang: rank 0 did not wait for a collective timeout (300 s by default)
        assert time.monotonic() - started < 60
        assert done["status"] == "failed", service.log_tail()
        assert done["error"]["type"] == "DistributedRunFailed", done["error"]
        assert "2 ranks did not finish" in done["error"]["message"]
        assert "Signal 9" in done["error"]["message"] or "SIGKILL" in done["error"]["message"]
        assert done["step"] < 2000
        job_dir = service.data_dir / "jobs" / job["id"]
        assert not (job_dir / "adapter").exists()
        assert (job_dir / "checkpoints" / "checkpoint-2").is_dir()
    finally:
        service.stop()


def test_a_shutdown_requeues_a_two_card_job_at_once_and_the_next_worker_resumes_it(
    tmp_path: Path, model_root: Path, tiny_model: Path, train_file: Path, fresh_redis_db: int
):
    """SIGTERM to the worker alone (docker stop): its pool process stops the job's launcher
    and ranks at once, the job is requeued without using an attempt, and a new 2-card worker
    resumes it from its newest periodic checkpoint (ranks write none of their own step)."""
    service = Service.create(
        tmp_path,
        model_root,
        LORACLE_BROKER_URL=f"redis://127.0.0.1:6379/{fresh_redis_db}",
        LORACLE_LEASE_TTL_S="600",  # a requeue through the lease would time the test out
        LORACLE_HEARTBEAT_S="1",
        LORACLE_DISPATCH_INTERVAL_S="0.5",
    )
    service.start_api()
    try:
        first = service.start_worker("--cards", "2", "--memory-gib", "8")
        _wait_registered(service)
        job = _submit(service, tiny_model, train_file, max_steps=40, checkpoint_steps=2)
        service.wait(job["id"], until=lambda j: j["status"] == "running" and j["step"] >= 5)
        first.send_signal(15)  # SIGTERM
        sent = time.monotonic()
        queued = service.wait(job["id"], until=lambda j: j["status"] == "queued", timeout=60)
        assert time.monotonic() - sent < 30, "requeued at once, not through the lease"
        assert queued["attempts"] == 0, "a shutdown does not use an attempt"
        assert first.wait(timeout=60) is not None, "the worker exits once the job is requeued"
        service.start_worker("--cards", "2", "--memory-gib", "8")
        done = service.wait(job["id"], timeout=300)
        assert done["status"] == "succeeded", service.log_tail()
        resumed = [e for e in service.events(job["id"]) if e["type"] == "resumed"]
        assert len(resumed) == 1 and resumed[0]["data"]["step"] >= 4, resumed
        assert [r["steps"] for r in _rank_lines(service, job["id"])][-2:] == [40, 40]
    finally:
        service.stop()
