"""`loracle demo` (and `make demo`): a tiny model and data built here, one job on a running
service, followed to the end; with no network but loopback for the demo, the API and the
worker alike (tests/utils/offline logs every attempt to go elsewhere)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli.demo import DEMO_DIR, DEMO_JOB
from tests.cli.conftest import flat, offline_env
from tests.utils.api import KEY_A
from tests.utils.service import ROOT, Service

pytestmark = pytest.mark.e2e


def test_make_demo_runs_loracle_demo():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: .*\n\t\$\(BIN\)/loracle demo$", makefile, flags=re.M)


def _demo(service: Service, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in service.env.items()
        # nothing that would keep the demo offline for it, nor a way round the guard
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") and "proxy" not in k.lower()
    }
    env.update({"LORACLE_URL": service.url, "LORACLE_API_KEY": KEY_A, "COLUMNS": "200"})
    return subprocess.run(
        [sys.executable, "-m", "cli", "demo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_demo_builds_a_model_and_data_offline_and_follows_the_job(
    cli_service: Service, model_root: Path, offline_log: Path, tmp_path: Path
):
    done = _demo(cli_service, tmp_path)
    out = flat(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr + cli_service.log_tail()
    folder = model_root / DEMO_DIR
    assert f"model: {folder / 'model'} (built)" in out
    assert f"data: {folder / 'train.jsonl'}, uploaded as file-" in out
    job_id = re.search(r"job: (job-[0-9a-f]{24}), lora, 40 steps", out)
    assert job_id, out
    job = cli_service.job(job_id.group(1))
    assert job["status"] == "succeeded" and job["step"] == DEMO_JOB["max_steps"]
    assert job["model"] == str(folder / "model") and job["variant"] == "lora"
    assert job["hyperparameters"]["seq_len"] == 64
    assert f"40/40 loss {job['loss']:.4f}" in out
    assert f"loracle jobs download {job['id']}" in done.stdout.strip().splitlines()[-1]
    losses = [e["data"]["loss"] for e in cli_service.events(job["id"]) if e["type"] == "metrics"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses  # it learned something

    # again: the model is reused, not rebuilt
    stamp = (folder / "model" / "model.safetensors").stat().st_mtime_ns
    again = _demo(cli_service, tmp_path, "--steps", "6", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert (folder / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    # --json: the API's answers, one a line: the file, the job, then each of its events
    uploaded, submitted, *events = [json.loads(line) for line in again.stdout.splitlines()]
    assert uploaded["object"] == "file" and submitted["training_file"] == uploaded["id"]
    assert events == cli_service.events(submitted["id"])[: len(events)] and events
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == [2, 4, 6]

    # nothing, in the demo or the service, tried to reach beyond this machine
    assert not offline_log.exists() or offline_log.read_text() == ""


def test_the_guard_the_demo_runs_under_does_refuse_the_network(tmp_path: Path):
    """The offline check above means something: the same environment refuses a lookup and
    logs it, even when the code catches the error."""
    log = tmp_path / "attempts.log"
    probe = (
        "import socket\n"
        "try:\n    socket.getaddrinfo('huggingface.co', 443)\nexcept OSError as e:\n    print(e)\n"
        "socket.getaddrinfo('127.0.0.1', 80)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**offline_env(log), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "network is unreachable" in done.stdout
    assert "getaddrinfo 'huggingface.co'" in log.read_text() and "127.0.0.1" not in log.read_text()
