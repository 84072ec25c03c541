"""Kill workers, redeliver messages, crash during checkpoints, stop Redis: every
fault is really done to real processes, and jobs must still end right."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.reliability.conftest import FAST_LEASES, SLOW, PrivateRedis
from tests.utils.service import Service, wait_for
from worker.checkpoints import CHECKPOINT_MARKER, CHECKPOINT_MARKER_TMP

pytestmark = pytest.mark.e2e


def _submit(service: Service, tiny_model: Path, train_file: Path, **hp: object) -> dict:
    file_id = service.upload(train_file)["id"]
    return service.submit(
        {
            "model": str(tiny_model),
            "training_file": file_id,
            "variant": "lora",
            "hyperparameters": {**SLOW, **hp},
        }
    )


def _pid(job: dict) -> int:
    return int(job["worker"].rsplit(":", 1)[1])


def _types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def _assert_resumed_once_and_single_adapter(service: Service, job: dict) -> int:
    events = service.events(job["id"])
    resumed = [e for e in events if e["type"] == "resumed"]
    assert len(resumed) == 1, _types(events)
    step = resumed[0]["data"]["step"]
    assert step >= 5, "resumed from a checkpoint, not from step 0"
    after = events[events.index(resumed[0]) :]
    metric_steps = [e["data"]["step"] for e in after if e["type"] == "metrics"]
    assert metric_steps and metric_steps[0] == step + 1, "training went on from the checkpoint"
    job_dir = service.data_dir / "jobs" / job["id"]
    assert sorted(p.name for p in job_dir.iterdir()) == ["adapter", "checkpoints"]
    names = [
        a["name"] for a in service.client().get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
    ]
    assert names.count("adapter_model.safetensors") == 1
    return int(step)


def test_training_process_killed_mid_job_resumes_from_its_checkpoint(
    service: Service, tiny_model: Path, train_file: Path
):
    service.start_worker()
    job = _submit(service, tiny_model, train_file)
    running = service.wait(job["id"], until=lambda j: j["status"] == "running" and j["step"] >= 12)
    killed_at = time.monotonic()
    os.kill(_pid(running), signal.SIGKILL)  # the pool process that trains; the worker lives on
    requeued = service.wait(job["id"], until=lambda j: j["attempts"] == 2, timeout=60)
    # noticed through the lease, not Redis's one-hour visibility timeout
    assert time.monotonic() - killed_at < float(FAST_LEASES["LORACLE_LEASE_TTL_S"]) + 15
    done = service.wait(requeued["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 2, service.log_tail()
    assert done["step"] == SLOW["max_steps"]
    assert "requeued" in _types(service.events(job["id"]))
    _assert_resumed_once_and_single_adapter(service, done)


def test_whole_worker_killed_then_a_new_worker_resumes(
    service: Service, tiny_model: Path, train_file: Path
):
    first = service.start_worker()
    job = _submit(service, tiny_model, train_file)
    service.wait(job["id"], until=lambda j: j["status"] == "running" and j["step"] >= 12)
    os.killpg(first.pid, signal.SIGKILL)  # main process and its pool: the machine is gone
    first.wait()
    service.start_worker()
    done = service.wait(job["id"], timeout=180)
    assert done["status"] == "succeeded" and done["attempts"] == 2, service.log_tail()
    _assert_resumed_once_and_single_adapter(service, done)


def _checkpoint_when_killed(service: Service, job_id: str, step: int) -> dict[str, object]:
    """What checkpoint-`step` held when the fault killed the training process: read as soon
    as the fault's flag file appears (it is written just before the SIGKILL), well before
    the lease expires and a new attempt could write the checkpoint again."""
    checkpoints = service.data_dir / "jobs" / job_id / "checkpoints"
    wait_for(lambda: (checkpoints / ".fault-injected").exists(), 120, "the fault", service)
    time.sleep(0.5)  # the kill itself
    assert service.job(job_id)["attempts"] == 1, "read before the second attempt started"
    folder = checkpoints / f"checkpoint-{step}"
    state = folder / "trainer_state.json"
    return {
        "dir": folder.is_dir(),
        "adapter": (folder / "adapter_model.safetensors").is_file(),
        "state_parses": state.is_file() and "global_step" in json.loads(state.read_text()),
        "marker": (folder / CHECKPOINT_MARKER).exists(),
        "marker_tmp": (folder / CHECKPOINT_MARKER_TMP).exists(),
        "previous_sealed": (checkpoints / f"checkpoint-{step - 5}" / CHECKPOINT_MARKER).is_file(),
    }


def _resumed_from_the_previous_checkpoint(service: Service, job: dict) -> None:
    done = service.wait(job["id"], timeout=180)
    assert done["status"] == "succeeded" and done["attempts"] == 2, service.log_tail()
    events = service.events(job["id"])
    assert any("checkpoint-15 is incomplete" in e["message"] for e in events), _types(events)
    assert _assert_resumed_once_and_single_adapter(service, done) == 10


def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(
    service: Service, tiny_model: Path, train_file: Path
):
    service.env["LORACLE_FAULT_KILL_IN_CHECKPOINT"] = "15"  # after the optimizer, mid-write
    service.start_worker()
    job = _submit(service, tiny_model, train_file)
    seen = _checkpoint_when_killed(service, job["id"], 15)
    assert seen["dir"] and seen["adapter"] and not seen["state_parses"], seen
    assert not seen["marker"] and seen["previous_sealed"], seen
    _resumed_from_the_previous_checkpoint(service, job)


def test_killed_after_the_trainer_wrote_a_checkpoint_but_before_its_marker(
    service: Service, tiny_model: Path, train_file: Path
):
    # Everything the Trainer writes is there and parses, the marker's temporary file too:
    # only the rename that makes the checkpoint complete is missing.
    service.env["LORACLE_FAULT_KILL_IN_CHECKPOINT"] = "15:before-marker"
    service.start_worker()
    job = _submit(service, tiny_model, train_file)
    seen = _checkpoint_when_killed(service, job["id"], 15)
    assert seen["dir"] and seen["adapter"] and seen["state_parses"], seen
    assert seen["marker_tmp"] and not seen["marker"] and seen["previous_sealed"], seen
    _resumed_from_the_previous_checkpoint(service, job)
    # What the resumed run left (the newest checkpoint_limit=2) is sealed, no marker half-made.
    kept = sorted((service.data_dir / "jobs" / job["id"] / "checkpoints").glob("checkpoint-*"))
    assert [p.name for p in kept] == ["checkpoint-35", "checkpoint-40"]
    assert all((p / CHECKPOINT_MARKER).is_file() for p in kept)
    assert not any((p / CHECKPOINT_MARKER_TMP).exists() for p in kept)


def test_second_delivery_does_not_train_twice(
    tmp_path: Path, model_root: Path, tiny_model: Path, train_file: Path, fresh_redis_db: int
):
    # Redis redelivers an unacknowledged message after the visibility timeout: make it
    # shorter than the job and give the redelivery a second worker to land on.
    service = Service.create(
        tmp_path / "svc",
        model_root,
        LORACLE_BROKER_URL=f"redis://127.0.0.1:6379/{fresh_redis_db}",
        LORACLE_BROKER_VISIBILITY_TIMEOUT_S="2",
        **FAST_LEASES,
    )
    service.start_api()
    try:
        service.start_worker()
        service.start_worker()
        # Long enough (several seconds) for the sweep to restore the message mid-job.
        job = _submit(service, tiny_model, train_file, max_steps=300, checkpoint_steps=None)
        done = service.wait(job["id"], timeout=300)
        assert done["status"] == "succeeded" and done["attempts"] == 1, service.log_tail()
        events = service.events(job["id"])
        assert _types(events).count("started") == 1
        duplicates = [e for e in events if e["type"] == "duplicate_delivery"]
        assert duplicates, f"no redelivery happened: {_types(events)}\n{service.log_tail()}"
        assert all(d["data"]["lease_owner"] == done["worker"] for d in duplicates)
        steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
        assert steps == list(range(1, 301)), "one process, one pass over the steps"
    finally:
        service.stop()


def test_job_that_kills_its_worker_every_time_fails_after_max_attempts(
    service: Service, tiny_model: Path, train_file: Path
):
    service.env["LORACLE_FAULT_KILL_AT_STEP"] = "2"  # like an OOM kill at step 2, every time
    service.start_worker()
    job = _submit(service, tiny_model, train_file, checkpoint_steps=None)
    done = service.wait(job["id"], timeout=240)
    assert done["status"] == "failed", service.log_tail()
    assert done["attempts"] == int(FAST_LEASES["LORACLE_MAX_ATTEMPTS"])
    assert done["error"]["type"] == "WorkerLost"
    time.sleep(3)  # nothing loops: the job stays failed and is not started again
    again = service.job(job["id"])
    assert again["status"] == "failed" and again["attempts"] == done["attempts"]


def test_redis_stopped_and_started_mid_job_loses_nothing(
    tmp_path: Path,
    model_root: Path,
    tiny_model: Path,
    train_file: Path,
    private_redis: PrivateRedis,
):
    service = Service.create(
        tmp_path / "svc", model_root, LORACLE_BROKER_URL=private_redis.url, **FAST_LEASES
    )
    service.start_api()
    try:
        service.start_worker()
        running = _submit(service, tiny_model, train_file, max_steps=60)
        service.wait(running["id"], until=lambda j: j["status"] == "running" and j["step"] >= 3)
        queued_before = [_submit(service, tiny_model, train_file, max_steps=5) for _ in range(2)]
        assert all(service.job(j["id"])["status"] == "queued" for j in queued_before)
        private_redis.stop()
        # While the broker is down, a job is still accepted: the store holds it.
        accepted = _submit(service, tiny_model, train_file, max_steps=5)
        assert accepted["status"] == "queued"
        time.sleep(3)
        assert service.job(running["id"])["status"] in ("running", "succeeded")
        private_redis.start()  # empty: the messages of queued_before are gone with it
        for job in (running, *queued_before, accepted):
            done = service.wait(job["id"], timeout=300)
            assert done["status"] == "succeeded", (job["id"], service.log_tail())
            # Trained once, by the first process that took it: a job the reaper took for
            # dead and ran again would also end succeeded, but on a second attempt.
            assert done["attempts"] == 1, (job["id"], done["attempts"])
            events = service.events(job["id"])
            assert "requeued" not in _types(events), (job["id"], _types(events))
            assert _types(events).count("started") == 1, (job["id"], _types(events))
        assert "broker_unavailable" in _types(service.events(accepted["id"]))
    finally:
        service.stop()


def _short_embedding_model(model_root: Path, tiny_model: Path) -> Path:
    """The tiny model with an embedding 40 rows shorter than its tokenizer: it loads, every
    row of a normal file trains, and the first micro-batch holding one of the tokenizer's
    last 40 tokens raises IndexError inside the forward pass, on every attempt alike (a
    model paired with the wrong tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = model_root / "short-embedding"
    if not folder.exists():
        shutil.copytree(tiny_model, folder)
        config = LlamaConfig.from_pretrained(tiny_model)
        config.vocab_size -= 40
        with torch.random.fork_rng():
            torch.manual_seed(0)
            LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_training_that_raises_mid_run_fails_once_and_the_worker_goes_on(
    service: Service, model_root: Path, tiny_model: Path, train_file: Path, tmp_path: Path
):
    model = _short_embedding_model(model_root, tiny_model)
    # Fine on upload (valid JSONL text): the row is only bad for this model's embedding.
    # " lazy" and " dog" are among the tokenizer's last merges (ids past the embedding).
    rows = train_file.read_text().splitlines()
    rows.insert(40, json.dumps({"text": "alpha bravo charlie the lazy dog"}))
    bad_file = tmp_path / "train-bad-row.jsonl"
    bad_file.write_text("\n".join(rows) + "\n")
    file_id = service.upload(bad_file)["id"]
    failing = service.submit(
        {"model": str(model), "training_file": file_id, "variant": "lora", "hyperparameters": SLOW}
    )
    after = _submit(service, tiny_model, train_file, max_steps=5)  # queued behind it
    service.start_worker()

    done = service.wait(failing["id"], timeout=180)
    assert done["status"] == "failed", service.log_tail()
    assert done["error"]["type"] == "IndexError", done["error"]
    assert "index out of range" in done["error"]["message"], done["error"]
    # It failed inside the training steps, not while loading: some steps were trained.
    assert 1 <= done["step"] < SLOW["max_steps"], done["step"]
    # A deterministic exception is not retried: one attempt, never requeued.
    assert done["attempts"] == 1
    events = service.events(failing["id"])
    assert _types(events).count("started") == 1 and "requeued" not in _types(events)

    # The same worker takes the next job and trains it.
    nxt = service.wait(after["id"], timeout=180)
    assert nxt["status"] == "succeeded" and nxt["attempts"] == 1, service.log_tail()
    assert len(service.workers) == 1 and service.workers[0].poll() is None
    time.sleep(3)  # nothing loops: the failed job stays failed and is not started again
    again = service.job(failing["id"])
    assert again["status"] == "failed" and again["attempts"] == 1


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_worker_killed_before_taking_the_lease_gets_the_job_sent_again(
    tmp_path: Path,
    model_root: Path,
    tiny_model: Path,
    train_file: Path,
    fresh_redis_db: int,
    broker: str,
):
    # The pool process takes the message and dies before the job's lease: Celery acks a dead
    # process's message (Redis) and the embedded broker deleted its file when it was read,
    # so only the job store still knows the job. It must be sent again, within
    # LORACLE_LOST_MESSAGE_AFTER_S + the dispatch interval, and train once.
    extra = {**FAST_LEASES, "LORACLE_LOST_MESSAGE_AFTER_S": "4"}
    if broker == "redis":
        extra["LORACLE_BROKER_URL"] = f"redis://127.0.0.1:6379/{fresh_redis_db}"
    service = Service.create(tmp_path / "svc", model_root, **extra)
    service.start_api()
    try:
        service.env["LORACLE_FAULT_KILL_BEFORE_LEASE"] = "1"
        service.start_worker()
        job = _submit(service, tiny_model, train_file, max_steps=4, checkpoint_steps=None)
        done = service.wait(job["id"], timeout=120)
        assert done["status"] == "succeeded", service.log_tail()
        assert done["attempts"] == 1, "the lost delivery never took the lease"
        assert (service.data_dir / "faults" / f"{job['id']}.before-lease").exists()
        types = _types(service.events(job["id"]))
        # Sent again at least once; a second send while the worker replaced its dead process
        # is harmless (a delivery that finds the lease taken exits) and bounded.
        assert 1 <= types.count("message_lost") <= 3, types
        assert types.count("started") == 1, types
    finally:
        service.stop()
