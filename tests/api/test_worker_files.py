"""/v1/worker/: the file routes of remote workers (api/worker_files), in process.

Who may (a worker token, not an API key; only the job it holds the lease of, only that job's
own files), and whole-or-nothing publishing (a changed, cut or unsafe upload leaves nothing).
The whole flow with a worker on another data directory is tests/e2e/test_remote_worker.py."""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.security import digest
from api.worker_files import service
from loracle import filestore
from loracle.settings import Settings
from tests.utils.api import KEY_A, client_for, settings_for
from tests.utils.builders import add_running_job, jsonl_bytes, sealed_checkpoint

WORKER_TOKEN = "lorw_test_worker_token"
ROWS = jsonl_bytes({"text": "one"}, {"text": "two"})


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return settings_for(
        tmp_path_factory.mktemp("worker-files"), worker_token_hashes=digest(WORKER_TOKEN)
    )


@pytest.fixture(scope="module")
def user(settings: Settings) -> Iterator[TestClient]:
    with client_for(settings) as c:
        yield c


@pytest.fixture(scope="module")
def worker(settings: Settings, user: TestClient) -> Iterator[TestClient]:
    with client_for(settings, key=WORKER_TOKEN) as c:
        yield c


def upload(user: TestClient, data: bytes = ROWS) -> dict:
    r = user.post(
        "/v1/files",
        files={"file": ("t.jsonl", data, "application/jsonl")},
        data={"purpose": "fine-tune"},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def new_job(settings: Settings, user: TestClient) -> tuple[str, int, dict]:
    file = upload(user)
    job_id, token = add_running_job(settings.resolved_database_url, file["id"], digest(KEY_A))
    return job_id, token, file


def tar_of(directory: Path) -> bytes:
    out = io.BytesIO()
    filestore.pack(directory, out)
    return out.getvalue()


def put(worker: TestClient, path: str, body: bytes, token: int, sha: str | None = None):
    headers = {
        "X-Loracle-Fencing-Token": str(token),
        "X-Loracle-Sha256": sha or hashlib.sha256(body).hexdigest(),
        "Content-Type": "application/x-tar",
    }
    return worker.put(path, content=body, headers=headers)


def leftovers(settings: Settings, job_id: str) -> list[str]:
    root = Path(settings.data_dir) / "jobs" / job_id
    return sorted(p.name for p in root.rglob("*") if p.name.startswith("."))


def test_a_worker_reads_the_training_file_of_the_job_it_holds_and_nothing_else(
    settings: Settings, user: TestClient, worker: TestClient
):
    job_id, token, file = new_job(settings, user)
    fenced = {"X-Loracle-Fencing-Token": str(token)}
    r = worker.get(f"/v1/worker/jobs/{job_id}/files/{file['id']}", headers=fenced)
    assert r.status_code == 200, r.text
    assert r.content == ROWS
    assert r.headers["X-Loracle-Sha256"] == file["sha256"] == hashlib.sha256(ROWS).hexdigest()

    other = upload(user, jsonl_bytes({"text": "another"}))  # same owner, not the job's file
    r = worker.get(f"/v1/worker/jobs/{job_id}/files/{other['id']}", headers=fenced)
    assert r.status_code == 404 and "training_file" in r.json()["detail"]

    stale = {"X-Loracle-Fencing-Token": str(token - 1)}
    r = worker.get(f"/v1/worker/jobs/{job_id}/files/{file['id']}", headers=stale)
    assert r.status_code == 409 and r.json()["error"] == "lease_lost"

    r = worker.get(f"/v1/worker/jobs/{job_id}/files/{file['id']}")
    assert r.status_code == 422
    assert r.json()["problems"][0]["field"] == "X-Loracle-Fencing-Token"


def test_worker_tokens_and_api_keys_do_not_stand_in_for_each_other(
    settings: Settings, user: TestClient, worker: TestClient
):
    job_id, token, file = new_job(settings, user)
    fenced = {"X-Loracle-Fencing-Token": str(token)}
    r = user.get(f"/v1/worker/jobs/{job_id}/files/{file['id']}", headers=fenced)
    assert r.status_code == 401 and "API key is not one" in r.json()["detail"]
    # Refused before the body is read: the header check comes first.
    r = put(user, f"/v1/worker/jobs/{job_id}/adapter", b"x" * 1000, token)
    assert r.status_code == 401
    assert worker.get("/v1/jobs").status_code == 401
    assert worker.get(f"/v1/jobs/{job_id}/artifacts").status_code == 401


def test_a_server_without_worker_tokens_says_what_to_set(tmp_path: Path):
    with client_for(settings_for(tmp_path), key=WORKER_TOKEN) as c:
        r = c.get("/v1/worker/jobs/job_x/checkpoints/latest")
    assert r.status_code == 401
    assert "LORACLE_WORKER_TOKEN_HASHES" in r.json()["detail"]


def test_a_sealed_checkpoint_is_published_and_served_back(
    settings: Settings, user: TestClient, worker: TestClient, tmp_path: Path
):
    job_id, token, _ = new_job(settings, user)
    fenced = {"X-Loracle-Fencing-Token": str(token)}
    base = f"/v1/worker/jobs/{job_id}/checkpoints"
    assert worker.get(f"{base}/latest", headers=fenced).status_code == 204

    two = sealed_checkpoint(tmp_path / "checkpoint-2", 2, b"step two")
    r = put(worker, f"{base}/2", tar_of(two), token)
    assert r.status_code == 201, r.text
    four = sealed_checkpoint(tmp_path / "checkpoint-4", 4, b"step four")
    assert put(worker, f"{base}/4", tar_of(four), token).status_code == 201

    published = Path(settings.data_dir) / "jobs" / job_id / "checkpoints"
    assert sorted(p.name for p in published.iterdir()) == ["checkpoint-4"]  # the newest only
    r = worker.get(f"{base}/latest", headers=fenced)
    assert r.status_code == 200 and r.headers["X-Loracle-Step"] == "4"
    assert r.headers["X-Loracle-Sha256"] == hashlib.sha256(r.content).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        names = set(tar.getnames())
        weights = tar.extractfile("adapter_model.safetensors")
        assert weights is not None and weights.read() == b"step four"
    assert filestore.CHECKPOINT_MARKER in names
    assert worker.get(f"{base}/latest", params={"after": 4}, headers=fenced).status_code == 204
    assert leftovers(settings, job_id) == []


def test_a_changed_cut_or_unsafe_upload_is_never_published(
    settings: Settings, user: TestClient, worker: TestClient, tmp_path: Path
):
    job_id, token, _ = new_job(settings, user)
    base = f"/v1/worker/jobs/{job_id}/checkpoints"
    # Weights large enough that half the tar ends inside them, not in the tar's end padding.
    whole = tar_of(sealed_checkpoint(tmp_path / "checkpoint-3", 3, b"w" * 100_000))

    # Half the tar, declared with the whole one's digest: what a cut upload looks like.
    r = put(worker, f"{base}/3", whole[: len(whole) // 2], token, hashlib.sha256(whole).hexdigest())
    assert r.status_code == 422 and r.json()["error"] == "checksum_mismatch"
    # Half the tar with its own digest: the tar itself is cut short.
    r = put(worker, f"{base}/3", whole[: len(whole) // 2], token)
    assert r.status_code == 422 and r.json()["error"] == "invalid_archive"
    # A whole tar under another step's name, and a checkpoint without its marker.
    assert put(worker, f"{base}/5", whole, token).json()["error"] == "invalid_archive"
    unsealed = tmp_path / "unsealed"
    unsealed.mkdir()
    (unsealed / "adapter_model.safetensors").write_bytes(b"w")
    assert put(worker, f"{base}/1", tar_of(unsealed), token).status_code == 422
    # A member that climbs out of the directory, and a symlink.
    for make in (_climbing_tar, _symlink_tar):
        r = put(worker, f"{base}/3", make(), token)
        assert r.status_code == 422 and r.json()["error"] == "invalid_archive", r.text
    assert not (Path(settings.data_dir) / "escaped").exists()
    r = put(worker, f"{base}/3", whole, token, sha="not-a-digest")
    assert r.status_code == 422 and "X-Loracle-Sha256" in r.json()["detail"]

    assert not (Path(settings.data_dir) / "jobs" / job_id / "checkpoints").exists() or not any(
        (Path(settings.data_dir) / "jobs" / job_id / "checkpoints").glob("checkpoint-*")
    )
    assert leftovers(settings, job_id) == []


def _climbing_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("../../escaped")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    return out.getvalue()


def _symlink_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("adapter_model.safetensors")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    return out.getvalue()


def test_the_adapter_is_published_whole_and_downloads_with_the_users_key(
    settings: Settings, user: TestClient, worker: TestClient, tmp_path: Path
):
    job_id, token, _ = new_job(settings, user)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in ("adapter_config.json", "plan.json", "metrics.json"):
        (adapter / name).write_text("{}")
    r = put(worker, f"/v1/worker/jobs/{job_id}/adapter", tar_of(adapter), token)
    assert r.status_code == 422 and "adapter_model.safetensors" in r.json()["detail"]
    assert user.get(f"/v1/jobs/{job_id}/artifacts").json()["data"] == []

    (adapter / "adapter_model.safetensors").write_bytes(b"lora weights")
    r = put(worker, f"/v1/worker/jobs/{job_id}/adapter", tar_of(adapter), token)
    assert r.status_code == 201, r.text
    names = {a["name"] for a in user.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]}
    assert names == {*service.ADAPTER_FILES}
    r = user.get(f"/v1/jobs/{job_id}/artifacts/adapter_model.safetensors")
    assert r.content == b"lora weights"
    assert leftovers(settings, job_id) == []


def test_an_upload_over_the_limit_is_refused_before_it_is_read(tmp_path: Path):
    settings = settings_for(
        tmp_path, worker_token_hashes=digest(WORKER_TOKEN), max_artifact_bytes=100
    )
    with client_for(settings) as user, client_for(settings, key=WORKER_TOKEN) as worker:
        job_id, token, _ = new_job(settings, user)
        r = put(worker, f"/v1/worker/jobs/{job_id}/adapter", b"x" * 101, token)
    assert r.status_code == 413 and "LORACLE_MAX_ARTIFACT_BYTES" in r.json()["detail"]


# -- the worker routes fuzzed with a worker token (tests/reliability/test_schema.py fuzzes
# every route with an API key, which these answer 401) ------------------------------------

_fuzzed = settings_for(
    Path(tempfile.mkdtemp(prefix="loracle-worker-schema-")),
    worker_token_hashes=digest(WORKER_TOKEN),
    max_artifact_bytes=4096,
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
worker_schema = schemathesis.openapi.from_asgi("/openapi.json", client_for(_fuzzed).app).include(
    path_regex="^/v1/worker/"
)


@worker_schema.parametrize()
@hypothesis.settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_worker_routes_conform_to_their_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {WORKER_TOKEN}"}, checks=CHECKS)
