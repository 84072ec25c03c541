"""Real loracle processes for end-to-end tests: a uvicorn API and Celery workers,
started as a user would (``python -m cli serve`` / ``worker``), with the
environment variables a user would set. Nothing is mocked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api.security import digest
from tests.utils.api import KEY_A, KEY_B

ROOT = Path(__file__).resolve().parents[2]
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# What every successful run leaves next to its adapter.
ADAPTER_FILES = frozenset(
    {"adapter_config.json", "adapter_model.safetensors", "plan.json", "metrics.json", "loss.png"}
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_available() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1):
            return True
    except OSError:
        return False


def flush_redis_db(db: int) -> None:
    import redis

    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db).flushdb()


@dataclass
class Service:
    """An API process plus any number of worker processes sharing one environment."""

    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: Path | None = None

    @classmethod
    def create(cls, data_dir: Path, model_root: Path, **extra_env: str) -> Service:
        env = {
            **os.environ,
            "LORACLE_API_KEY_HASHES": f"{digest(KEY_A)},{digest(KEY_B)}",
            "LORACLE_DATA_DIR": str(data_dir),
            "LORACLE_MODEL_ROOTS": str(model_root),
            "LORACLE_DISPATCH_INTERVAL_S": "1",
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
            **extra_env,
        }
        if "LORACLE_BROKER_URL" not in extra_env:
            env.pop("LORACLE_BROKER_URL", None)
        service = cls(data_dir=data_dir, env=env, logs=data_dir / "logs")
        service.logs.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        return service

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        assert self.logs is not None
        log = (self.logs / f"{name}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_api(self) -> None:
        self.api = self._spawn("api", "serve", "--host", "127.0.0.1", "--port", str(self.port))
        wait_for(lambda: self._healthy(), 60, "the API to answer /healthz", self)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """A worker process; `args` go to `loracle worker` (e.g. "--memory-gib", "8"); `env`
        is added to the service's environment (a worker of another host: its own
        LORACLE_DATA_DIR, LORACLE_API_URL and worker token)."""
        proc = self._spawn(f"worker-{len(self.workers)}", "worker", *args, env=env)
        self.workers.append(proc)
        return proc

    def stop(self) -> None:
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log_tail(self, lines: int = 60) -> str:
        assert self.logs is not None
        out = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    # -- the REST API -----------------------------------------------------------------

    def client(self, key: str | None = KEY_A) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, timeout=30, headers=headers)

    def upload(self, path: Path, client: httpx.Client | None = None) -> dict[str, Any]:
        c = client or self.client()
        r = c.post(
            "/v1/files",
            files={"file": (path.name, path.read_bytes(), "application/jsonl")},
            data={"purpose": "fine-tune"},
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    def submit(self, body: dict[str, Any], client: httpx.Client | None = None) -> dict[str, Any]:
        c = client or self.client()
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def job(self, job_id: str, client: httpx.Client | None = None) -> dict[str, Any]:
        c = client or self.client()
        r = c.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def events(self, job_id: str, client: httpx.Client | None = None) -> list[dict[str, Any]]:
        c = client or self.client()
        return list(c.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"])

    def wait(
        self,
        job_id: str,
        until: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 240,
        client: httpx.Client | None = None,
        interval: float = 0.3,
    ) -> dict[str, Any]:
        """Poll every ``interval`` seconds until ``until(job)`` (default: a terminal status)."""
        done = until or (lambda j: j["status"] in ("succeeded", "failed", "cancelled"))
        box: dict[str, Any] = {}

        def check() -> bool:
            box["job"] = self.job(job_id, client)
            return bool(done(box["job"]))

        wait_for(check, timeout, f"job {job_id}", self, interval)
        return dict(box["job"])


def inference_consumer(worker: int, timeout: float = 60) -> Any:
    """The inference consumer (`loracle worker --inference-only`) that the worker process
    `worker` started beside itself, as a psutil.Process, once it is there."""
    import psutil

    box: dict[str, Any] = {}

    def started() -> bool:
        for child in psutil.Process(worker).children():
            if "--inference-only" in child.cmdline():
                box["child"] = child
                return True
        return False

    wait_for(started, timeout, "the inference consumer to start")
    return box["child"]


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    service: Service | None = None,
    interval: float = 0.3,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    tail = service.log_tail() if service else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


# -- what a finished job left -------------------------------------------------------


def download_artifacts(service: Service, job_id: str, dest: Path) -> Path:
    """Every artifact of a job, downloaded over REST into ``dest/job_id``; checks that
    the adapter's files are among them."""
    out = dest / job_id
    out.mkdir()
    with service.client() as c:
        names = [a["name"] for a in c.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]]
        assert ADAPTER_FILES <= set(names), names
        for name in names:
            r = c.get(f"/v1/jobs/{job_id}/artifacts/{name}")
            assert r.status_code == 200, r.text
            (out / name).write_bytes(r.content)
    return out


def assert_loss_fell(losses: list[float], window: int = 4) -> None:
    """The mean of the last ``window`` step losses is below that of the first."""
    assert len(losses) >= 2 * window, losses
    assert sum(losses[-window:]) / window < sum(losses[:window]) / window, losses


def assert_adapter_changes_logits(base_model: Path, adapter: Path) -> None:
    """The adapter loads onto the base with ``PeftModel.from_pretrained`` and moves
    its logits. (torch, transformers and peft are imported here, not with the module.)"""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 2, 11]])
    base = AutoModelForCausalLM.from_pretrained(base_model)
    with torch.no_grad():
        before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, adapter)
    with torch.no_grad():
        after = tuned(ids).logits
    assert not torch.allclose(before, after, atol=1e-4)
