"""Authentication, ownership, idempotency, paths, upload limits, remote code and
pickles: each against a real uvicorn process (no worker needed: jobs just queue)."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from api.main import create_app
from tests.utils.api import KEY_A, KEY_B
from tests.utils.service import ROOT, Service

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, model_root: Path, tiny_model: Path):
    base = tmp_path_factory.mktemp("sec")
    svc = Service.create(base / "data", model_root, LORACLE_MAX_UPLOAD_BYTES="20000")
    svc.start_api()
    try:
        yield svc
    finally:
        svc.stop()


def _job_body(tiny_model: Path, file_id: str, **extra: object) -> dict:
    return {"model": str(tiny_model), "training_file": file_id, "variant": "lora", **extra}


# -- 8. authentication and ownership ------------------------------------------------------


def test_every_endpoint_but_healthz_needs_a_valid_key(api: Service):
    paths = create_app().openapi()["paths"]
    probed = 0
    with httpx.Client(base_url=api.url, timeout=10) as c:
        for path, operations in paths.items():
            if not path.startswith("/v1/"):
                continue
            url = path.replace("{job_id}", "job-x").replace("{file_id}", "file-x")
            url = url.replace("{name}", "x")
            for method in operations:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY_A}):
                    r = c.request(method.upper(), url, headers=headers)
                    assert r.status_code == 401, (method, url, headers, r.text)
                    assert r.json()["error"] == "unauthorized"
                    assert r.headers["www-authenticate"] == "Bearer"
                probed += 1
        assert probed >= 10
        assert c.get("/healthz").status_code == 200


def test_files_and_jobs_belong_to_the_key_that_created_them(
    api: Service, train_file: Path, tiny_model: Path
):
    a, b = api.client(KEY_A), api.client(KEY_B)
    file_a = api.upload(train_file, a)
    job_a = api.submit(_job_body(tiny_model, file_a["id"]), a)
    for path in (
        f"/v1/files/{file_a['id']}",
        f"/v1/jobs/{job_a['id']}",
        f"/v1/jobs/{job_a['id']}/events",
        f"/v1/jobs/{job_a['id']}/artifacts",
    ):
        assert a.get(path).status_code == 200, path
        assert b.get(path).status_code == 404, path
    assert b.post(f"/v1/jobs/{job_a['id']}/cancel").status_code == 404
    # B cannot train on A's file either
    r = b.post("/v1/jobs", json=_job_body(tiny_model, file_a["id"]))
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "training_file"
    assert job_a["id"] not in {j["id"] for j in b.get("/v1/jobs").json()["data"]}
    assert job_a["id"] in {j["id"] for j in a.get("/v1/jobs").json()["data"]}


def test_server_refuses_to_start_without_keys_and_warns_loudly_when_auth_is_off(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORACLE_")}
    env["LORACLE_DATA_DIR"] = str(tmp_path)
    refused = subprocess.run(
        [sys.executable, "-m", "loracle.cli", "serve", "--port", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "LORACLE_API_KEY_HASHES" in refused.stdout + refused.stderr

    svc = Service.create(tmp_path / "open", tmp_path, LORACLE_AUTH_DISABLED="1")
    svc.env.pop("LORACLE_API_KEY_HASHES")
    svc.start_api()
    try:
        assert svc.client(key=None).get("/v1/jobs").status_code == 200
        time.sleep(0.5)
        assert "AUTHENTICATION IS DISABLED" in (svc.data_dir / "logs" / "api.log").read_text()
    finally:
        svc.stop()


# -- 6. idempotency -----------------------------------------------------------------------


def test_idempotency_key_on_jobs(api: Service, train_file: Path, tiny_model: Path):
    c = api.client()
    file_id = api.upload(train_file)["id"]
    body = _job_body(tiny_model, file_id)
    first = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    again = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = c.post("/v1/jobs", json={**body, "variant": "dora"}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and other.json()["problems"][0]["field"] == "Idempotency-Key"
    # the same key under another API key is another key
    b = api.client(KEY_B)
    file_b = api.upload(train_file, b)["id"]
    r = b.post("/v1/jobs", json=_job_body(tiny_model, file_b), headers={"Idempotency-Key": "k-1"})
    assert r.status_code == 201


def test_fifty_concurrent_requests_with_one_key_create_one_job(
    api: Service, train_file: Path, tiny_model: Path
):
    file_id = api.upload(train_file)["id"]
    body = _job_body(tiny_model, file_id, hyperparameters={"seed": 50})
    before = {j["id"] for j in api.client().get("/v1/jobs", params={"limit": 100}).json()["data"]}

    def post(_: int) -> httpx.Response:
        with api.client() as c:
            return c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "fifty"})

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(post, range(50)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 1 and codes.count(200) == 49, codes
    assert len({r.json()["id"] for r in answers}) == 1
    after = {j["id"] for j in api.client().get("/v1/jobs", params={"limit": 100}).json()["data"]}
    assert len(after - before) == 1


def test_idempotency_key_on_files(api: Service, train_file: Path):
    c = api.client()
    content = train_file.read_bytes()

    def up(data: bytes) -> httpx.Response:
        return c.post(
            "/v1/files",
            files={"file": ("train.jsonl", data)},
            data={"purpose": "fine-tune"},
            headers={"Idempotency-Key": "file-key"},
        )

    first, again = up(content), up(content)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert up(content + b'{"text": "one more"}\n').status_code == 422


# -- 9. paths -----------------------------------------------------------------------------


def _tree(root: Path, skip: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.is_relative_to(skip)}


@pytest.mark.parametrize(
    "model",
    [
        "../../etc",
        "/etc",
        "/tmp/../etc/passwd",
        "%2e%2e%2f%2e%2e%2fetc",
        "..%2fetc",
        "/models/x\x00.json",
        "./relative/model",
    ],
)
def test_path_like_model_fields_get_422(api: Service, train_file: Path, model: str):
    file_id = api.upload(train_file)["id"]
    r = api.client().post(
        "/v1/jobs", json={"model": model, "training_file": file_id, "variant": "lora"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["problems"][0]["field"] == "model"


def test_symlinks_into_or_out_of_the_root_get_422(
    api: Service, train_file: Path, model_root: Path, tiny_model: Path, tmp_path: Path
):
    file_id = api.upload(train_file)["id"]
    inside_link = model_root / "link-to-tiny"
    if not inside_link.exists():
        inside_link.symlink_to(tiny_model, target_is_directory=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    escape = model_root / "escape"
    if not escape.exists():
        escape.symlink_to(outside, target_is_directory=True)
    for model in (str(inside_link), str(escape)):
        r = api.client().post(
            "/v1/jobs", json={"model": model, "training_file": file_id, "variant": "lora"}
        )
        assert r.status_code == 422 and r.json()["problems"][0]["field"] == "model", r.text


@pytest.mark.parametrize(
    "filename", ["../../escape.jsonl", "/tmp/abs.jsonl", "..%2f..%2fx.jsonl", "a\\..\\b.jsonl"]
)
def test_upload_filenames_with_paths_get_422_and_write_nothing_outside(
    api: Service, train_file: Path, filename: str
):
    outer = api.data_dir.parent
    before = _tree(outer, api.data_dir)
    r = api.client().post(
        "/v1/files",
        files={"file": (filename, train_file.read_bytes())},
        data={"purpose": "fine-tune"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["problems"][0]["field"] == "file.filename"
    assert _tree(outer, api.data_dir) == before
    assert not list(api.data_dir.glob("files/*escape*"))


@pytest.mark.parametrize("name", ["../plan.json", "..%2fplan.json", "a/../../b", "x%00y"])
def test_artifact_names_with_paths_get_422(
    api: Service, train_file: Path, tiny_model: Path, name: str
):
    file_id = api.upload(train_file)["id"]
    job = api.submit(_job_body(tiny_model, file_id))
    # sent raw: an HTTP client would normalise the dot segments away
    head = f"GET /v1/jobs/{job['id']}/artifacts/{name} HTTP/1.1\r\nHost: x\r\n{_auth()}"
    answer = _raw(api.port, (head + "Connection: close\r\n\r\n").encode(), [])
    assert answer.startswith(b"HTTP/1.1 422"), (name, answer[:300])


# -- 10. upload limits, remote code, pickles -----------------------------------------------


def _raw(port: int, head: bytes, body_chunks: list[bytes], pause: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                break
            time.sleep(pause)
        sock.settimeout(10)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
        return data


def _auth() -> str:
    return f"Authorization: Bearer {KEY_A}\r\n"


def test_declared_oversize_upload_is_413_before_any_body(api: Service):
    head = (
        "POST /v1/files HTTP/1.1\r\nHost: x\r\n"
        + _auth()
        + "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 50000000000\r\n\r\n"
    ).encode()
    started = time.monotonic()
    answer = _raw(api.port, head, [])  # not one body byte is sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 5


def test_chunked_oversize_upload_is_413_while_streaming(api: Service):
    head = (
        "POST /v1/files HTTP/1.1\r\nHost: x\r\n"
        + _auth()
        + "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
    line = b'{"text": "' + b"x" * 4000 + b'"}\n'
    chunks = [part] + [line] * 200  # 800 KB, far over the 20 KB limit, no length declared
    framed = [f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks]
    answer = _raw(api.port, head, framed, pause=0.002)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert not list(api.data_dir.glob("files/*.part"))


def test_model_asking_for_remote_code_is_refused(
    api: Service, train_file: Path, model_root: Path, tiny_model: Path
):
    remote = model_root / "remote-code"
    if not remote.exists():
        remote.mkdir()
        config = json.loads((tiny_model / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
        (remote / "config.json").write_text(json.dumps(config))
        (remote / "model.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes())
    file_id = api.upload(train_file)["id"]
    r = api.client().post("/v1/jobs", json=_job_body(remote, file_id))
    assert r.status_code == 422
    problem = r.json()["problems"][0]
    assert problem["field"] == "model" and "remote code" in problem["message"]


class _WritesAFile:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # what an attacker's pickle does when loaded
        return (open, (self.target, "w"))


def test_checkpoint_holding_a_pickle_that_writes_a_file_is_refused(
    tmp_path: Path, tiny_model: Path, train_file: Path, model_root: Path
):
    from tests.utils.builders import plan_dict
    from worker.plan import load_plan
    from worker.safety import CheckpointRefused
    from worker.training import run_training, seal_checkpoint

    out = tmp_path / "run"
    plan = load_plan(plan_dict(tiny_model, train_file, out, max_steps=4, checkpoint_steps=2))
    assert run_training(plan).status == "succeeded"
    checkpoint = max((out / "checkpoints").glob("checkpoint-*"))
    planted = tmp_path / "pwned.txt"
    (checkpoint / "optimizer.pt").write_bytes(pickle.dumps({"state": _WritesAFile(str(planted))}))
    # Whoever can write a checkpoint can write its completion marker too: re-sealed, the
    # tampered checkpoint is the one resume picks, and the scan must stop it.
    seal_checkpoint(checkpoint, int(checkpoint.name.split("-")[1]))
    longer = load_plan(plan_dict(tiny_model, train_file, out, max_steps=8, checkpoint_steps=2))
    with pytest.raises(CheckpointRefused, match="refused without loading it"):
        run_training(longer, resume=True)
    assert not planted.exists()
