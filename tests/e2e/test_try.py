"""Trying an adapter end to end, against a real uvicorn API and a real `loracle worker` (with
the inference consumer it starts beside itself), on the embedded broker and on Redis: a job
trains, its try is answered while another job trains on the same worker (the try's queue is
its own), and stopping the worker stops its inference consumer too."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.utils.service import Service, inference_consumer, wait_for

pytestmark = pytest.mark.e2e

FAST = {"max_steps": 30, "seq_len": 32, "learning_rate": 1e-2}


def follow(service: Service, answer: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    client = service.client()
    box = {"try": answer}

    def done() -> bool:
        box["try"] = client.get(box["try"]["url"]).json()
        return box["try"]["status"] in ("succeeded", "failed")

    if answer["status"] not in ("succeeded", "failed"):
        wait_for(done, timeout, f"the try {answer['id']}", service)
    return box["try"]


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_a_trained_job_is_tried_beside_a_training_job_and_the_consumer_stops_with_its_worker(
    tmp_path: Path,
    model_root: Path,
    tiny_model: Path,
    train_file: Path,
    fresh_redis_db: int,
    broker: str,
):
    env = {"LORACLE_BROKER_URL": f"redis://127.0.0.1:6379/{fresh_redis_db}"}
    service = Service.create(tmp_path / "svc", model_root, **(env if broker == "redis" else {}))
    service.start_api()
    try:
        worker = service.start_worker("--memory-gib", "24")
        consumer = inference_consumer(worker.pid)
        client = service.client()
        file_id = service.upload(train_file)["id"]
        job = service.submit(
            {
                "model": str(tiny_model),
                "training_file": file_id,
                "variant": "lora",
                "hyperparameters": FAST,
            }
        )
        assert service.wait(job["id"])["status"] == "succeeded", service.log_tail()

        # A long job holds the worker's only training process while the try is asked.
        busy = service.submit(
            {
                "model": str(tiny_model),
                "training_file": file_id,
                "variant": "lora",
                "hyperparameters": {**FAST, "max_steps": 100_000, "checkpoint_steps": None},
            }
        )
        service.wait(busy["id"], until=lambda j: j["status"] == "running" and j["step"] >= 1)
        started = time.monotonic()
        answer = client.post(
            f"/v1/fine_tuning/jobs/{job['id']}/try",
            json={"prompts": ["alpha bravo charlie"], "max_new_tokens": 6},
        )
        assert answer.status_code in (200, 202), answer.text
        done = follow(service, answer.json())
        latency = time.monotonic() - started
        assert done["status"] == "succeeded", (done, service.log_tail())
        completion = done["completions"][0]
        assert completion["adapter"].split()[:2] == ["delta", "echo"], completion
        assert completion["base"] != completion["adapter"]
        assert service.job(busy["id"])["status"] == "running", "tried while it trained"
        started = time.monotonic()
        again = client.post(
            f"/v1/jobs/{job['id']}/try",
            json={"prompts": ["alpha bravo charlie"], "max_new_tokens": 6},
        )
        again_done = follow(service, again.json())
        assert again_done["completions"] == done["completions"], "greedy: the same again"
        print(
            f"try on {broker}, beside a training job: {latency:.2f} s, then "
            f"{time.monotonic() - started:.2f} s end to end (HTTP {answer.status_code}, "
            f"{again.status_code}); load {again_done['load_seconds']} s, generate "
            f"{again_done['generate_seconds']} s"
        )
        client.post(f"/v1/jobs/{busy['id']}/cancel")
        service.wait(busy["id"])

        # The CLI-shaped signal a user sends: SIGTERM to the worker alone stops both.
        os.kill(worker.pid, signal.SIGTERM)
        assert worker.wait(timeout=60) is not None
        wait_for(lambda: not consumer.is_running(), 30, "the inference consumer to stop")
    finally:
        service.stop()


def test_the_inference_consumer_stops_when_its_worker_is_killed(
    tmp_path: Path, model_root: Path, tiny_model: Path
):
    """SIGKILL leaves no handler to run: the consumer notices its worker is gone and stops
    rather than take tries alone."""
    service = Service.create(tmp_path / "svc", model_root)
    try:
        worker = service.start_worker("--memory-gib", "24")
        consumer = inference_consumer(worker.pid)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        wait_for(lambda: not consumer.is_running(), 60, "the orphaned consumer to stop")
    finally:
        service.stop()


def test_a_try_being_generated_stops_promptly_when_its_consumer_is_stopped(
    tmp_path: Path, model_root: Path, tiny_model: Path, train_file: Path
):
    """SIGTERM to the consumer mid-generation: the try stops at its next token and fails
    with `worker_shutdown` (ask again), and the consumer exits in seconds, not after the
    whole try."""
    service = Service.create(tmp_path / "svc", model_root, LORACLE_TRY_WAIT_S="0")
    service.start_api()
    try:
        worker = service.start_worker("--memory-gib", "24")
        consumer = inference_consumer(worker.pid)
        client = service.client()
        file_id = service.upload(train_file)["id"]
        job = service.submit(
            {
                "model": str(tiny_model),
                "training_file": file_id,
                "variant": "lora",
                "hyperparameters": {**FAST, "max_steps": 4},
            }
        )
        assert service.wait(job["id"])["status"] == "succeeded", service.log_tail()
        # 8 prompts x 2 sides x 500 tokens, sampled: far longer than the stop may take.
        body = {"prompts": ["alpha"] * 8, "max_new_tokens": 500, "temperature": 1.0}
        answer = client.post(f"/v1/jobs/{job['id']}/try", json=body)
        assert answer.status_code == 202, answer.text
        asked = answer.json()
        wait_for(
            lambda: client.get(asked["url"]).json()["status"] == "running",
            60,
            "the try to start",
            service,
        )
        time.sleep(0.5)  # into the generation (the tiny model loads in a fraction of that)
        consumer.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        wait_for(lambda: not consumer.is_running(), 30, "the consumer to stop", service)
        assert time.monotonic() - stopped < 15, "stopped at a token, not after the try"
        done = client.get(asked["url"]).json()
        assert done["status"] == "failed", done
        assert done["error"]["code"] == "worker_shutdown", done
        assert "ask again" in done["error"]["message"]

        # The worker, still running, starts another consumer, which takes the next try.
        again = inference_consumer(worker.pid)
        assert again.pid != consumer.pid
        answer = client.post(f"/v1/jobs/{job['id']}/try", json={"prompts": ["alpha"]})
        assert follow(service, answer.json())["status"] == "succeeded", service.log_tail()
    finally:
        service.stop()
