"""A worker stopped mid-job (SIGTERM, Ctrl-C) leaves a true status: the job checkpoints its
step, is requeued at once, and the next worker resumes it from that checkpoint without
waiting out a lease. Real API and worker processes on the tiny model; the signals are real."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.reliability.conftest import SLOW
from tests.utils.service import Service, inference_consumer, wait_for
from worker.checkpoints import CHECKPOINT_MARKER

pytestmark = pytest.mark.e2e

# Far longer than the test: a job that came back through its lease's expiry would time out.
LONG_LEASE = {
    "LORACLE_LEASE_TTL_S": "600",
    "LORACLE_HEARTBEAT_S": "1",
    "LORACLE_DISPATCH_INTERVAL_S": "0.5",
    "LORACLE_MAX_ATTEMPTS": "3",
}

# Enough steps to be signalled mid-run (a step takes tens of ms; the test looks every 0.3 s),
# few enough to finish soon on a busy machine.
STEPS = 80


def _send(worker: int, how: str) -> str:
    if how == "sigterm-to-worker":  # docker stop, systemd KillMode=mixed, `loracle up`
        os.kill(worker, signal.SIGTERM)
        return "SIGTERM"
    if how == "sigterm-to-group":  # systemd's default KillMode=control-group
        # The training process gets it twice, directly and forwarded: one request, not two.
        os.killpg(worker, signal.SIGTERM)
        return "SIGTERM"
    os.killpg(worker, signal.SIGINT)  # Ctrl-C: the whole foreground process group
    return "SIGINT"


@pytest.mark.parametrize("how", ["sigterm-to-worker", "sigterm-to-group", "sigint-to-group"])
def test_shutdown_checkpoints_requeues_at_once_and_the_next_worker_resumes(
    tmp_path: Path,
    model_root: Path,
    tiny_model: Path,
    train_file: Path,
    fresh_redis_db: int,
    how: str,
):
    service = Service.create(
        tmp_path / "svc",
        model_root,
        LORACLE_BROKER_URL=f"redis://127.0.0.1:6379/{fresh_redis_db}",
        **LONG_LEASE,
    )
    service.start_api()
    try:
        first = service.start_worker()
        consumer = inference_consumer(first.pid)
        file_id = service.upload(train_file)["id"]
        # No periodic checkpoints: any checkpoint on disk is the one the shutdown wrote.
        job = service.submit(
            {
                "model": str(tiny_model),
                "training_file": file_id,
                "variant": "lora",
                "hyperparameters": {**SLOW, "max_steps": STEPS, "checkpoint_steps": None},
            }
        )
        service.wait(job["id"], until=lambda j: j["status"] == "running" and j["step"] >= 5)
        name = _send(first.pid, how)
        sent = time.monotonic()
        queued = service.wait(job["id"], until=lambda j: j["status"] == "queued", timeout=30)
        assert time.monotonic() - sent < 15, "requeued at once, not through the lease"
        assert queued["attempts"] == 0, "a shutdown does not use an attempt"
        assert first.wait(timeout=60) is not None, "the worker exits once the job is requeued"
        wait_for(lambda: not consumer.is_running(), 30, "the inference consumer to stop")

        events = service.events(job["id"])
        requeued = [e for e in events if e["type"] == "requeued"]
        assert len(requeued) == 1, [e["type"] for e in events]
        data = requeued[0]["data"]
        step = data["stopped_at_step"]
        assert data["reason"] == "shutdown" and data["signal"] == name, data
        assert data["checkpoint_error"] is None, data
        assert data["checkpoint_step"] == step and 5 <= step < STEPS, data
        message = requeued[0]["message"]
        assert f"shutting down ({name})" in message, message
        assert f"resumes from checkpoint-{step} (step {step})" in message, message
        folder = service.data_dir / "jobs" / job["id"] / "checkpoints" / f"checkpoint-{step}"
        assert (folder / CHECKPOINT_MARKER).is_file(), "the shutdown's checkpoint is sealed"
        assert "stopped" in [e["type"] for e in events]

        service.start_worker()
        done = service.wait(job["id"], timeout=300)
        assert done["status"] == "succeeded" and done["step"] == STEPS, service.log_tail()
        assert done["attempts"] == 1
        events = service.events(job["id"])
        resumed = [e for e in events if e["type"] == "resumed"]
        assert [e["data"]["step"] for e in resumed] == [step], service.log_tail()
        after = events[events.index(resumed[0]) :]
        metric_steps = [e["data"]["step"] for e in after if e["type"] == "metrics"]
        assert metric_steps[0] == step + 1, "training went on from the shutdown's checkpoint"
    finally:
        service.stop()
