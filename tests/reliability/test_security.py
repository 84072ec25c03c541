"""Authentication, ownership, idempotency, paths, upload limits, remote code and
pickles: each against a real uvicorn process (no worker needed: jobs just queue)."""

from __future__ import annotations

import json
import os
import pickle
import select
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from api.main import create_app
from tests.utils.api import KEY_A, KEY_B, error_code
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
        # The documented paths, and /v1/jobs: the undocumented alias of /v1/fine_tuning/jobs.
        aliases = {
            p.replace("/v1/fine_tuning/jobs", "/v1/jobs"): ops
            for p, ops in paths.items()
            if p.startswith("/v1/fine_tuning/jobs")
        }
        for path, operations in {**paths, **aliases}.items():
            if not path.startswith("/v1/"):
                continue
            url = path.replace("{job_id}", "job-x").replace("{file_id}", "file-x")
            url = url.replace("{name}", "x")
            for method in operations:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY_A}):
                    r = c.request(method.upper(), url, headers=headers)
                    assert r.status_code == 401, (method, url, headers, r.text)
                    assert error_code(r.json()) == "unauthorized"
                    assert r.headers["www-authenticate"] == "Bearer"
                probed += 1
        assert probed >= 20
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
    # A download names the job first: B learns nothing of A's job or its files.
    download = f"/v1/jobs/{job_a['id']}/artifacts/adapter_model.safetensors"
    r = b.get(download)
    assert r.status_code == 404 and r.json()["detail"].startswith("no job")
    assert "has no artifact" in a.get(download).json()["detail"]
    # B cannot train on A's file either
    r = b.post("/v1/jobs", json=_job_body(tiny_model, file_a["id"]))
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "training_file"
    assert job_a["id"] not in {j["id"] for j in b.get("/v1/jobs").json()["data"]}
    assert job_a["id"] in {j["id"] for j in a.get("/v1/jobs").json()["data"]}


def test_server_refuses_to_start_without_keys_and_warns_loudly_when_auth_is_off(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORACLE_")}
    env["LORACLE_DATA_DIR"] = str(tmp_path)
    refused = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--port", "1"],
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
#
# Each attack names places outside the data directory. For every case the test computes the
# exact paths the value could reach (as given, percent-decoded, NUL cut, backslashes as
# slashes; against each directory the server could resolve it from) and snapshots them and
# the directories they lie in (each entry's type, size and mtime) before and after: any file
# written, replaced or touched there fails the test. Directories others write to meanwhile
# (the shared /tmp, the repository the server runs from and its parent) are compared only at
# the exact paths named, since a write there would have to land at one of those names.

OUTSIDE = "{outside}"  # stands for a directory of the test's own, next to the data dir


def _tree(root: Path, skip: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.is_relative_to(skip)}


def _outside(api: Service) -> Path:
    folder = api.data_dir.parent / "outside"
    folder.mkdir(exist_ok=True)
    (folder / "secret.txt").write_text("the contents no answer may carry\n")
    return folder


def _targets(value: str, bases: list[Path]) -> set[Path]:
    """Every path `value` names from any of `bases`, under the decodings a server might do."""
    cut = value.split("\x00", 1)[0]
    forms = {value.replace("\x00", ""), cut, urllib.parse.unquote(value), urllib.parse.unquote(cut)}
    forms |= {f.replace("\\", "/") for f in forms}
    forms |= {f.split("\x00", 1)[0] for f in forms}  # a NUL that decoding put back
    return {
        Path(os.path.normpath(base / os.path.expanduser(form)))
        for form in forms
        if "\x00" not in form
        for base in bases
    }


def _shared_areas() -> set[Path]:
    return {Path("/"), Path(tempfile.gettempdir()), ROOT, ROOT.parent}


def _snapshot(targets: set[Path], data_dir: Path) -> dict[str, tuple[int, int, int] | None]:
    def stat(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.lstat()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None
        return (st.st_mode, st.st_size, st.st_mtime_ns)

    snap: dict[str, tuple[int, int, int] | None] = {}
    for target in targets:
        snap[str(target)] = stat(target)
        for area in (target, target.parent):
            if area.is_relative_to(data_dir) or area in _shared_areas() or not area.is_dir():
                continue
            try:
                entries = list(area.iterdir())
            except PermissionError:
                continue
            snap[str(area)] = stat(area)
            for entry in entries:
                snap[str(entry)] = stat(entry)
    return snap


class _Watch:
    """The places an attack value names, outside the data dir, before and after."""

    def __init__(self, api: Service, *values: str, extra_bases: tuple[Path, ...] = ()) -> None:
        bases = [ROOT, api.data_dir, api.data_dir / "files", api.data_dir / "jobs", *extra_bases]
        self.data_dir = api.data_dir
        self.targets = {
            t for v in values for t in _targets(v, bases) if not t.is_relative_to(api.data_dir)
        }
        assert self.targets, values
        self.outer = api.data_dir.parent  # the test's own: compared whole
        self.before = _snapshot(self.targets, api.data_dir)
        self.tree = _tree(self.outer, api.data_dir)

    def assert_untouched(self) -> None:
        after = _snapshot(self.targets, self.data_dir)
        keys = self.before.keys() | after.keys()
        changed = {k for k in keys if self.before.get(k) != after.get(k)}
        assert not changed, f"written outside the data dir: {sorted(changed)}"
        assert _tree(self.outer, self.data_dir) == self.tree


def _fill(value: str, outside: Path) -> str:
    return value.replace(OUTSIDE, str(outside))


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
        f"{OUTSIDE}/model",
        "../outside/model",
    ],
)
def test_path_like_model_fields_get_422(
    api: Service, train_file: Path, model_root: Path, model: str
):
    model = _fill(model, _outside(api))
    file_id = api.upload(train_file)["id"]
    watch = _Watch(api, model, extra_bases=(model_root,))
    r = api.client().post(
        "/v1/jobs", json={"model": model, "training_file": file_id, "variant": "lora"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["problems"][0]["field"] == "model"
    watch.assert_untouched()


def test_symlinks_into_or_out_of_the_root_get_422(
    api: Service, train_file: Path, model_root: Path, tiny_model: Path
):
    outside = _outside(api)
    file_id = api.upload(train_file)["id"]
    inside_link = model_root / "link-to-tiny"
    if not inside_link.exists():
        inside_link.symlink_to(tiny_model, target_is_directory=True)
    escape = model_root / "escape"
    if not escape.exists():
        escape.symlink_to(outside, target_is_directory=True)
    # A real directory inside the root whose weights are a symlink out of it.
    leaky = model_root / "leaky-weights"
    if not leaky.exists():
        leaky.mkdir()
        (leaky / "config.json").write_bytes((tiny_model / "config.json").read_bytes())
        (outside / "model.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes())
        (leaky / "model.safetensors").symlink_to(outside / "model.safetensors")
    for model in (str(inside_link), str(escape), str(leaky), f"{escape}/secret.txt"):
        watch = _Watch(api, model, str(outside / "model.safetensors"))
        r = api.client().post(
            "/v1/jobs", json={"model": model, "training_file": file_id, "variant": "lora"}
        )
        assert r.status_code == 422 and r.json()["problems"][0]["field"] == "model", r.text
        watch.assert_untouched()


@pytest.mark.parametrize(
    "filename",
    [
        "../../escape.jsonl",
        "/tmp/abs.jsonl",
        "..%2f..%2fx.jsonl",
        "a\\..\\b.jsonl",
        f"{OUTSIDE}/abs.jsonl",
        "../outside/secret.txt",
        "..%2foutside%2fsecret.txt",
        "x\x00../../outside/secret.txt",
    ],
)
def test_upload_filenames_with_paths_get_422_and_write_nothing_outside(
    api: Service, train_file: Path, filename: str
):
    filename = _fill(filename, _outside(api))
    watch = _Watch(api, filename)
    r = api.client().post(
        "/v1/files",
        files={"file": (filename, train_file.read_bytes())},
        data={"purpose": "fine-tune"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["problems"][0]["field"] == "file.filename"
    watch.assert_untouched()
    assert not list(api.data_dir.glob("files/*escape*"))


def test_an_upload_named_like_a_planted_symlink_never_writes_through_it(
    api: Service, train_file: Path
):
    # The server stores uploads under ids of its own: a symlink waiting at the name a
    # client sends is never followed.
    outside = _outside(api)
    files = api.data_dir / "files"
    files.mkdir(exist_ok=True)
    trap = files / "trap.jsonl"
    if not trap.is_symlink():
        trap.symlink_to(outside / "secret.txt")
    watch = _Watch(api, str(outside / "secret.txt"))
    r = api.client().post(
        "/v1/files",
        files={"file": ("trap.jsonl", train_file.read_bytes())},
        data={"purpose": "fine-tune"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == "trap.jsonl"
    assert (files / f"{r.json()['id']}.jsonl").is_file()
    assert not (files / f"{r.json()['id']}.jsonl").is_symlink()
    watch.assert_untouched()


@pytest.mark.parametrize(
    "name",
    [
        "../plan.json",
        "..%2fplan.json",
        "a/../../b",
        "x%00y",
        "..%2f..%2f..%2f..%2foutside%2fsecret.txt",
        "../../../../outside/secret.txt",
        "%2fetc%2fpasswd",
        "/etc/passwd",
    ],
)
def test_artifact_names_with_paths_get_422(
    api: Service, train_file: Path, tiny_model: Path, name: str
):
    outside = _outside(api)
    file_id = api.upload(train_file)["id"]
    job = api.submit(_job_body(tiny_model, file_id))
    adapter = api.data_dir / "jobs" / job["id"] / "adapter"
    watch = _Watch(api, name, extra_bases=(adapter,))
    # sent raw: an HTTP client would normalise the dot segments away
    head = f"GET /v1/jobs/{job['id']}/artifacts/{name} HTTP/1.1\r\nHost: x\r\n{_auth()}"
    answer = _raw(api.port, (head + "Connection: close\r\n\r\n").encode(), [])
    assert answer.startswith(b"HTTP/1.1 422"), (name, answer[:300])
    assert (outside / "secret.txt").read_bytes() not in answer
    watch.assert_untouched()


def test_symlinked_artifacts_are_neither_listed_nor_served(
    api: Service, train_file: Path, tiny_model: Path
):
    outside = _outside(api)
    secret = (outside / "secret.txt").read_bytes()
    file_id = api.upload(train_file)["id"]
    job = api.submit(_job_body(tiny_model, file_id))
    adapter = api.data_dir / "jobs" / job["id"] / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "leak.txt").symlink_to(outside / "secret.txt")
    (adapter / "dir").symlink_to(outside, target_is_directory=True)
    watch = _Watch(api, str(outside / "secret.txt"))
    c = api.client()
    listed = c.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
    assert [a["name"] for a in listed] == ["adapter_config.json"]
    assert c.get(f"/v1/jobs/{job['id']}/artifacts/adapter_config.json").status_code == 200
    for name, status in (("leak.txt", 404), ("dir", 404), ("dir/secret.txt", 422)):
        r = c.get(f"/v1/jobs/{job['id']}/artifacts/{name}")
        assert r.status_code == status, (name, r.status_code, r.text)
        assert secret not in r.content
    watch.assert_untouched()


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


@dataclass
class Streamed:
    answer: bytes
    chunks_sent: int  # body chunks sent before the answer arrived
    closed: bool  # the server closed the connection after answering


def _stream(
    port: int,
    head: bytes,
    chunks: list[bytes],
    pause: float = 0.02,
    first_pause: float | None = None,
) -> Streamed:
    """Send `head`, then the body one chunk at a time, `pause` apart (`first_pause` before
    the first one), and stop sending the moment the server answers. A server that reads the
    whole body before answering is caught: its answer arrives only after the last chunk."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sent = 0
        while not select.select(
            [sock], [], [], pause if sent or first_pause is None else first_pause
        )[0]:
            if sent == len(chunks):
                select.select([sock], [], [], 10)
                break
            try:
                sock.sendall(chunks[sent])
            except OSError:  # the server closed while we were still sending
                break
            sent += 1
        answer, closed = b"", False
        sock.settimeout(10)
        try:
            while data := sock.recv(65536):
                answer += data
            closed = True
        except OSError:
            pass
        return Streamed(answer, sent, closed)


def _chunked(chunks: list[bytes]) -> list[bytes]:
    return [f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks] + [b"0\r\n\r\n"]


def _upload_head(auth: str, framing: str = "Transfer-Encoding: chunked") -> bytes:
    return (
        "POST /v1/files HTTP/1.1\r\nHost: x\r\n"
        + auth
        + f"Content-Type: multipart/form-data; boundary=b\r\n{framing}\r\n\r\n"
    ).encode()


PART = b'--b\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'


def _auth() -> str:
    return f"Authorization: Bearer {KEY_A}\r\n"


def _stored(api: Service) -> tuple[set[str], list[str]]:
    folder = api.data_dir / "files"
    files = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    ids = [f["id"] for f in api.client().get("/v1/files", params={"limit": 1000}).json()["data"]]
    return files, ids


def test_declared_oversize_upload_is_413_before_any_body(api: Service):
    head = _upload_head(_auth(), "Content-Length: 50000000000")
    started = time.monotonic()
    answer = _raw(api.port, head, [])  # not one body byte is sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 5


def test_chunked_oversize_upload_is_413_while_streaming(api: Service):
    before = _stored(api)
    line = b'{"text": "' + b"x" * 4000 + b'"}\n'
    # 800 KB in 4 KB chunks, no length declared; the limit is 20 KB (+ 64 KiB of room for
    # the multipart framing), so the server has what it needs to refuse by chunk 22.
    chunks = _chunked([PART] + [line] * 200)
    sent = _stream(api.port, _upload_head(_auth()), chunks)
    assert sent.answer.startswith(b"HTTP/1.1 413"), sent.answer[:200]
    assert b"LORACLE_MAX_UPLOAD_BYTES" in sent.answer
    # Answered while most of the body was still to come, and the connection dropped.
    assert sent.chunks_sent < len(chunks) // 4, (sent.chunks_sent, len(chunks))
    assert sent.closed
    assert _stored(api) == before, "nothing was stored"


@pytest.mark.parametrize(
    ("auth", "framing"),
    [
        ("", "Transfer-Encoding: chunked"),
        ("Authorization: Bearer wrong\r\n", "Transfer-Encoding: chunked"),
        ("Authorization: Basic Zm9vOmJhcg==\r\n", "Transfer-Encoding: chunked"),
        ("", "Content-Length: 810000"),
        ("", "Content-Length: 50000000000"),
    ],
)
def test_upload_without_a_valid_key_is_401_before_its_body(api: Service, auth: str, framing: str):
    before = _stored(api)
    line = b'{"text": "' + b"x" * 4000 + b'"}\n'
    chunks = [PART] + [line] * 200
    body = _chunked(chunks) if "chunked" in framing else chunks
    # Up to 5 s for an answer to the head alone: on a busy machine a server may take
    # longer than one chunk's pause to answer, and one waiting for the body never answers.
    sent = _stream(api.port, _upload_head(auth, framing), body, pause=0.05, first_pause=5.0)
    assert sent.answer.startswith(b"HTTP/1.1 401"), sent.answer[:300]
    # /v1/files answers in OpenAI's error shape.
    assert b'"code":"unauthorized"' in sent.answer.replace(b" ", b"")
    assert b"www-authenticate: bearer" in sent.answer.lower()
    assert sent.chunks_sent == 0, "the 401 came before any of the body was sent"
    assert sent.closed
    assert _stored(api) == before


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
    from loracle.plan import load_plan
    from tests.utils.builders import plan_dict
    from worker.checkpoints import seal_checkpoint
    from worker.safety import CheckpointRefused
    from worker.training import run_training

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
