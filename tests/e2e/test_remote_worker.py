"""A worker on "another host": its LORACLE_DATA_DIR shares nothing with the API's. It has
the broker (Redis), the store (PostgreSQL) and LORACLE_API_URL with a worker token; files
move over the API's /v1/worker/ routes (worker/transport.py, api/worker_files).

Faults: a worker that cannot reach the API requeues the job with FileStoreUnreachable and a
good worker finishes it; an upload cut off mid-body on the real server is never published.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.security import digest
from loracle import filestore
from loracle.store import jobs as store
from loracle.store.db import session
from tests.utils.api import KEY_A
from tests.utils.builders import add_running_job, sealed_checkpoint
from tests.utils.postgres import fresh_database
from tests.utils.service import (
    Service,
    assert_adapter_changes_logits,
    download_artifacts,
    flush_redis_db,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.e2e

WORKER_TOKEN = "lorw_e2e_remote_worker"


@pytest.fixture(scope="module")
def remote(
    tmp_path_factory: pytest.TempPathFactory, model_root: Path, tiny_model: Path, redis_db: int
) -> Iterator[Service]:
    """The API on one data directory; workers are started by each test on their own."""
    with fresh_database() as url:
        service = Service.create(
            tmp_path_factory.mktemp("api-host"),
            model_root,
            LORACLE_DATABASE_URL=url,
            LORACLE_BROKER_URL=f"redis://127.0.0.1:6379/{redis_db}",
            LORACLE_WORKER_TOKEN_HASHES=digest(WORKER_TOKEN),
            # A worker killed mid-attempt loses its lease in seconds, not a minute (and not
            # so few that a heartbeat starved on a loaded 2-core machine loses it).
            LORACLE_LEASE_TTL_S="10",
            LORACLE_HEARTBEAT_S="1",
        )
        service.start_api()
        try:
            yield service
        finally:
            service.stop()
            flush_redis_db(redis_db)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """A worker of this test, stopped as compose would: SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def worker_env(data_dir: Path, api_url: str) -> dict[str, str]:
    return {
        "LORACLE_DATA_DIR": str(data_dir),
        "LORACLE_API_URL": api_url,
        "LORACLE_WORKER_TOKEN": WORKER_TOKEN,
    }


def job_body(model: Path, file_id: str) -> dict:
    return {
        "model": str(model),
        "training_file": file_id,
        "variant": "lora",
        "hyperparameters": {
            "max_steps": 6,
            "seq_len": 48,
            "learning_rate": 5e-3,
            "checkpoint_steps": 2,
        },
    }


def test_a_job_runs_on_a_worker_that_shares_no_disk_with_the_api(
    remote: Service,
    tiny_model: Path,
    datasets: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
):
    host_b = tmp_path_factory.mktemp("worker-host")
    worker = remote.start_worker(env=worker_env(host_b, remote.url))
    try:
        file = remote.upload(datasets["prompt_completion"])
        job = remote.submit(job_body(tiny_model, file["id"]))
        done = remote.wait(job["id"])
        assert done["status"] == "succeeded", remote.log_tail()
    finally:
        stop(worker)

    api_job = remote.data_dir / "jobs" / job["id"]
    listing = sorted(str(p.relative_to(api_job)) for p in api_job.rglob("*"))
    events = [(e["type"], e["message"]) for e in remote.events(job["id"])]
    # The API's disk holds what the worker uploaded: the adapter and the newest checkpoint.
    assert (api_job / "adapter" / "adapter_model.safetensors").is_file(), listing
    assert [p.name for p in (api_job / "checkpoints").iterdir()] == ["checkpoint-6"], listing
    assert filestore.marker_step(api_job / "checkpoints" / "checkpoint-6") == 6, events
    # The worker's disk: the training file came into its cache, checked; it never saw the
    # API's files directory.
    cached = host_b / "cache" / "files" / f"{file['id']}.jsonl"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == file["sha256"]
    assert not (host_b / "files").exists()
    assert not any(p.name.startswith(".") for p in api_job.rglob("*")), (listing, events)

    adapter = download_artifacts(remote, job["id"], tmp_path)
    assert_adapter_changes_logits(tiny_model, adapter)


def test_an_unreachable_file_store_requeues_the_job_and_another_worker_finishes_it(
    remote: Service,
    tiny_model: Path,
    datasets: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cut_off = remote.start_worker(env=worker_env(tmp_path_factory.mktemp("cut-off"), closed))
    file = remote.upload(datasets["text"])
    job = remote.submit(job_body(tiny_model, file["id"]))

    def requeued() -> list[dict]:
        return [e for e in remote.events(job["id"]) if e["type"] == "requeued"]

    try:
        wait_for(lambda: bool(requeued()), 120, "the job to be requeued", remote)
    finally:
        os.killpg(cut_off.pid, signal.SIGKILL)
        cut_off.wait(30)
    event = requeued()[0]
    assert event["data"]["error_type"] == "FileStoreUnreachable"
    assert "could not be reached" in event["data"]["error_message"]
    assert closed in event["data"]["error_message"]
    assert not (remote.data_dir / "jobs" / job["id"] / "adapter").exists()

    good = remote.start_worker(env=worker_env(tmp_path_factory.mktemp("good"), remote.url))
    try:
        done = remote.wait(job["id"])
    finally:
        stop(good)
    assert done["status"] == "succeeded", remote.log_tail()
    adapter = remote.data_dir / "jobs" / job["id"] / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()


def test_an_upload_cut_off_mid_body_is_never_published(
    remote: Service, datasets: dict[str, Path], tmp_path: Path
):
    file = remote.upload(datasets["text"])
    url = remote.env["LORACLE_DATABASE_URL"]
    job_id, token = add_running_job(url, file["id"], digest(KEY_A))
    whole = io.BytesIO()
    filestore.pack(sealed_checkpoint(tmp_path / "checkpoint-2", 2, b"w" * 500_000), whole)
    body = whole.getvalue()
    head = (
        f"PUT /v1/worker/jobs/{job_id}/checkpoints/2 HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{remote.port}\r\n"
        f"Authorization: Bearer {WORKER_TOKEN}\r\n"
        f"X-Loracle-Fencing-Token: {token}\r\n"
        f"X-Loracle-Sha256: {hashlib.sha256(body).hexdigest()}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    job_root = remote.data_dir / "jobs" / job_id
    with socket.create_connection(("127.0.0.1", remote.port)) as conn:
        conn.sendall(head + body[: len(body) // 2])
        # The API is receiving it: its temporary file exists...
        wait_for(lambda: any(job_root.glob(".upload-*.part")), 30, "the upload to start")
    # ...and once the connection is gone, nothing is left, and nothing was published.
    wait_for(lambda: not any(job_root.glob(".upload-*.part")), 30, "the temp file to go", remote)
    time.sleep(0.5)
    assert not (job_root / "checkpoints").exists()
    with session(url) as s:
        row = store.get_job(s, job_id, any_owner=True)
        assert row is not None and row.status == "running"  # the job itself is untouched
    # The same upload, whole, is published: the cut one failed for being cut, not for its content.
    with remote.client(None) as c:
        r = c.put(
            f"/v1/worker/jobs/{job_id}/checkpoints/2",
            content=body,
            headers={
                "Authorization": f"Bearer {WORKER_TOKEN}",
                "X-Loracle-Fencing-Token": str(token),
                "X-Loracle-Sha256": hashlib.sha256(body).hexdigest(),
            },
        )
    assert r.status_code == 201, r.text
    assert filestore.marker_step(job_root / "checkpoints" / "checkpoint-2") == 2


def test_a_job_killed_on_one_host_resumes_on_another_from_the_published_checkpoint(
    remote: Service,
    tiny_model: Path,
    datasets: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
):
    host_b, host_c = tmp_path_factory.mktemp("dies"), tmp_path_factory.mktemp("resumes")
    dies = remote.start_worker(
        env={**worker_env(host_b, remote.url), "LORACLE_FAULT_KILL_AT_STEP": "5"}
    )
    file = remote.upload(datasets["prompt_completion"])
    body = job_body(tiny_model, file["id"])
    body["hyperparameters"].update(max_steps=8, logging_steps=1)
    job = remote.submit(body)

    def killed_after_checkpoint_4() -> bool:
        # The fault kills the training process once step 5 is recorded; the rest of host B
        # goes too, as with a machine lost.
        steps = [e["data"].get("step") for e in remote.events(job["id"])]
        return remote.job(job["id"])["step"] >= 5 and 4 in steps

    try:
        wait_for(killed_after_checkpoint_4, 180, "the run to die after step 5", remote)
    finally:
        os.killpg(dies.pid, signal.SIGKILL)
        dies.wait(30)
    published = remote.data_dir / "jobs" / job["id"] / "checkpoints"
    assert [p.name for p in published.iterdir()] == ["checkpoint-4"]

    resumes = remote.start_worker(env=worker_env(host_c, remote.url))
    try:
        done = remote.wait(job["id"], timeout=240)
    finally:
        stop(resumes)
    assert done["status"] == "succeeded", remote.log_tail()
    resumed = [e["data"] for e in remote.events(job["id"]) if e["type"] == "resumed"]
    # The last start is host C's, from its copy of the checkpoint B published.
    assert resumed and resumed[-1]["step"] == 4, resumed
    assert resumed[-1]["checkpoint"].startswith(str(host_c))


def test_a_download_is_checked_against_the_stored_sha256_and_the_cache_too(
    remote: Service, datasets: dict[str, Path], tmp_path: Path
):
    from loracle.errors import FileStoreUnreachable
    from loracle.settings import Settings
    from worker.errors import LeaseLost
    from worker.transport import RemoteFiles

    file = remote.upload(datasets["text"])
    url = remote.env["LORACLE_DATABASE_URL"]
    job_id, token = add_running_job(url, file["id"], digest(KEY_A))
    settings = Settings(
        data_dir=tmp_path,
        database_url=url,
        broker_url=remote.env["LORACLE_BROKER_URL"],
        api_url=remote.url,
        worker_token=WORKER_TOKEN,
    )
    files = RemoteFiles(settings, job_id, token)
    original = datasets["text"].read_bytes()
    cached = files.data_file(file["id"])
    assert cached.read_bytes() == original

    cached.write_bytes(b'{"text": "changed on the worker"}\n')  # a damaged cache is refetched
    assert files.data_file(file["id"]).read_bytes() == original

    served = remote.data_dir / "files" / f"{file['id']}.jsonl"
    served.write_bytes(b'{"text": "changed on the API"}\n')  # a damaged source is refused
    cached.unlink()
    with pytest.raises(FileStoreUnreachable, match="arrived with sha256"):
        files.data_file(file["id"])
    assert not cached.exists() and not list(cached.parent.glob(".download-*"))
    served.write_bytes(original)

    with pytest.raises(LeaseLost, match="lease_lost"):
        RemoteFiles(settings, job_id, token + 1).data_file(file["id"])


def test_a_stopped_remote_worker_uploads_its_shutdown_checkpoint_and_another_host_resumes(
    remote: Service,
    tiny_model: Path,
    datasets: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
):
    """`docker compose stop` of a GPU host: SIGTERM makes the job checkpoint its step
    (worker/shutdown.py); on a remote worker that checkpoint reaches the API before the job
    is requeued, so a host with none of B's disk resumes from it."""
    host_b, host_c = tmp_path_factory.mktemp("stopped"), tmp_path_factory.mktemp("takes-over")
    first = remote.start_worker(env=worker_env(host_b, remote.url))
    file = remote.upload(datasets["prompt_completion"])
    body = job_body(tiny_model, file["id"])
    # No periodic checkpoints: the only one is the shutdown's. Slow enough (accumulated
    # steps, a step logged each time) to be stopped mid-run, as tests/reliability does.
    body["hyperparameters"].update(
        max_steps=80, checkpoint_steps=None, gradient_accumulation_steps=4, logging_steps=1
    )
    job = remote.submit(body)
    try:
        remote.wait(job["id"], until=lambda j: j["status"] == "running" and j["step"] >= 3)
        os.kill(first.pid, signal.SIGTERM)  # docker stop signals the main process
        remote.wait(job["id"], until=lambda j: j["status"] == "queued", timeout=60)
    finally:
        stop(first)
    requeued = [e["data"] for e in remote.events(job["id"]) if e["type"] == "requeued"]
    step = requeued[-1]["checkpoint_step"]
    assert step and step >= 3, requeued
    published = remote.data_dir / "jobs" / job["id"] / "checkpoints"
    assert [p.name for p in published.iterdir()] == [f"checkpoint-{step}"]

    second = remote.start_worker(env=worker_env(host_c, remote.url))
    try:
        done = remote.wait(job["id"], timeout=240)
    finally:
        stop(second)
    assert done["status"] == "succeeded", remote.log_tail()
    resumed = [e["data"] for e in remote.events(job["id"]) if e["type"] == "resumed"]
    assert resumed[-1]["step"] == step and resumed[-1]["checkpoint"].startswith(str(host_c))
