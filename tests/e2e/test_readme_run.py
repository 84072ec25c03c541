"""The README's first command and its job walkthrough, run as written: `loracle up`
(what `make run` starts) on a fresh data directory, the API key it prints, and the
shell block that uploads, submits, waits and downloads."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.utils.service import ROOT, free_port

pytestmark = pytest.mark.e2e

README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()


def test_make_run_is_loracle_up():
    assert re.search(r"^run: .*\n\t\$\(BIN\)/loracle up$", MAKEFILE, flags=re.M)


def test_first_run_prints_a_key_and_the_walkthrough_trains(
    tmp_path: Path, model_root: Path, tiny_model: Path, datasets: dict[str, Path]
):
    port = free_port()
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORACLE_")}
    env.update(
        {
            "LORACLE_DATA_DIR": str(data_dir),
            "LORACLE_MODEL_ROOTS": str(model_root),
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
        }
    )
    log = (tmp_path / "up.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        # up prints the key last, once the worker is ready too (after /healthz answers)
        while time.monotonic() < deadline + 180:
            output = Path(log.name).read_text()
            key = re.search(r"export LORACLE_API_KEY=(\S+)", output)
            if key:
                break
            time.sleep(0.3)
        assert key, output
        assert (data_dir / "api-key.sha256").read_text().strip() != key.group(1)
        assert httpx.get(f"{base}/v1/jobs", timeout=5).status_code == 401

        block = next(
            b for b in re.findall(r"```sh\n(.*?)```", README, flags=re.S) if "$API/files" in b
        )
        script = (
            block.replace("http://127.0.0.1:8000", base)
            .replace('"Qwen/Qwen2.5-0.5B"', f'"{tiny_model}"')
            .replace("file=@train.jsonl", f"file=@{datasets['text']}")
        )
        work = tmp_path / "user"
        work.mkdir()
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=work,
            env={**env, "LORACLE_API_KEY": key.group(1)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr + Path(log.name).read_text()[-3000:]
        assert '"status": "succeeded"' in result.stdout, result.stdout
        assert "advisor chose" in result.stdout
        weights = work / "adapter_model.safetensors"
        assert weights.stat().st_size > 1000
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
