"""A stand-in for the Hugging Face hub on this machine, for the hub check's tests (no test
reaches the internet; tests/conftest.py points HF_ENDPOINT at a closed port otherwise).

It answers GET /api/models/<org>/<name> as the hub does: the model's info with its file list
for a model it knows, 404 with `X-Error-Code: RepoNotFound` for one it does not, 403 with
`X-Error-Code: GatedRepo` for a gated one, and a 500 for one marked broken."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class FakeHub:
    url: str
    models: dict[str, list[str]] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)
    broken: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)


@contextmanager
def fake_hub(models: dict[str, list[str]] | None = None) -> Iterator[FakeHub]:
    """A stand-in hub on a free local port; `models` maps repo ids to their files."""
    hub = FakeHub(url="", models=dict(models or {}))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hub.requests.append(self.path)
            repo_id = self.path.split("?", 1)[0].removeprefix("/api/models/")
            if repo_id in hub.broken:
                self._answer(500, {"error": "internal error"})
            elif repo_id in hub.gated:
                self._answer(403, {"error": "gated"}, {"X-Error-Code": "GatedRepo"})
            elif repo_id in hub.models:
                siblings = [{"rfilename": name} for name in hub.models[repo_id]]
                self._answer(200, {"id": repo_id, "sha": "0" * 40, "siblings": siblings})
            else:
                self._answer(
                    404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                )

        def _answer(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def refusing_port() -> Iterator[str]:
    """The address of a port that refuses connections: bound, never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextmanager
def silent_port() -> Iterator[str]:
    """The address of a server that takes connections and never answers: the kernel completes
    the handshake for a listening socket that nobody accepts from."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def cache_model(hf_home: Path, repo_id: str) -> None:
    """Put `repo_id`'s config.json in the hub cache under `hf_home`, laid out as
    huggingface_hub writes it (refs/main names the snapshot)."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "1" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.json").write_text('{"model_type": "llama"}')


@contextmanager
def hub_that_has(monkeypatch, *repo_ids: str) -> Iterator[FakeHub]:
    """Online, against a stand-in hub that has `repo_ids` (with safetensors weights): for
    tests whose jobs name a hub id but are about something else."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with fake_hub({r: ["config.json", "model.safetensors"] for r in repo_ids}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub
