"""Fixtures for fault-injection tests: real services with short leases, so a dead
worker is noticed in seconds rather than a minute."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.service import Service, free_port

FAST_LEASES = {
    "LORACLE_LEASE_TTL_S": "4",
    "LORACLE_HEARTBEAT_S": "1",
    "LORACLE_DISPATCH_INTERVAL_S": "0.5",
    "LORACLE_MAX_ATTEMPTS": "3",
}

# Slow enough to act on mid-run (each optimizer step is 4 micro batches), short
# enough to finish in seconds; a checkpoint every 5 steps.
SLOW = {
    "max_steps": 40,
    "gradient_accumulation_steps": 4,
    "seq_len": 48,
    "learning_rate": 5e-3,
    "checkpoint_steps": 5,
    "logging_steps": 1,
}


@pytest.fixture()
def service(
    tmp_path: Path, model_root: Path, tiny_model: Path, fresh_redis_db: int
) -> Iterator[Service]:
    svc = Service.create(
        tmp_path / "svc",
        model_root,
        LORACLE_BROKER_URL=f"redis://127.0.0.1:6379/{fresh_redis_db}",
        **FAST_LEASES,
    )
    svc.start_api()
    try:
        yield svc
    finally:
        svc.stop()


class PrivateRedis:
    """A redis-server of the test's own, on its own port, so stopping it disturbs
    nothing else on the machine. Keeps nothing on disk, like the default server."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
