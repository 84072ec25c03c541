"""`loracle up` starts quietly: the new key is the last thing it prints, framed, with the line
that exports it; the libraries' known noise (on start and on every job) is filtered; and
`--log-format json` makes every log line, the worker's included, one JSON object."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.utils.service import ROOT, free_port

pytestmark = pytest.mark.e2e

# What the libraries print that loracle filters (cli/logs.py), and what stays.
NOISE = (
    "No module named 'kernels'",  # bitsandbytes, on an AVX512-BF16 CPU
    "FutureWarning",  # transformers' gradient_checkpointing renames, every job
    "will be removed in v6",
    "No hostname was supplied",  # kombu with the embedded broker
    "Loading weights",  # transformers' progress bars, every job
    "Writing model shards",
    "SetuptoolsDeprecationWarning",
    "-------------- celery@",  # Celery's banner
    "[tasks]",
)
PANEL_END = re.compile(r"export LORACLE_API_KEY=(\S+).*\n.*\n╰─+╯\s*$")


@contextmanager
def loracle_up(
    tmp_path: Path, model_root: Path, *args: str, stdout: IO[str], stderr: IO[str] | int
) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORACLE_")}
    env.update(
        {
            "LORACLE_DATA_DIR": str(tmp_path / "data"),
            "LORACLE_MODEL_ROOTS": str(model_root),
            "PYTHONUNBUFFERED": "1",
        }
    )
    # up's own defaults must do it; and the width of a plain 80-column terminal
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "COLUMNS"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--port", str(port), *args],
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for_key(path: Path, timeout: float = 180) -> str:
    """The key from the panel `up` prints once the API and the worker are ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = PANEL_END.search(path.read_text(errors="replace"))
        if found:
            return found.group(1)
        time.sleep(0.3)
    raise AssertionError(f"no key panel after {timeout:.0f}s:\n{path.read_text()[-3000:]}")


def run_a_job(url: str, key: str, model: Path, data: Path) -> None:
    """A short job through the service `up` started, with the key it printed."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        file_id = c.post(
            "/v1/files",
            files={"file": (data.name, data.read_bytes())},
            data={"purpose": "fine-tune"},
        ).json()["id"]
        job = c.post(
            "/v1/jobs",
            json={
                "model": str(model),
                "training_file": file_id,
                "variant": "lora",
                "hyperparameters": {"max_steps": 4, "seq_len": 32},
            },
        ).json()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status = c.get(f"/v1/jobs/{job['id']}").json()["status"]
            if status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.5)
        assert status == "succeeded", status


def test_the_key_is_printed_last_framed_and_the_known_noise_is_gone(
    tmp_path: Path, model_root: Path, tiny_model: Path, datasets: dict[str, Path]
):
    log_path = tmp_path / "up.log"
    with (
        log_path.open("w") as log,
        loracle_up(tmp_path, model_root, stdout=log, stderr=subprocess.STDOUT) as url,
    ):
        key = wait_for_key(log_path)
        time.sleep(2)  # anything start-up still had to say would come now
        output = log_path.read_text()
        lines = output.rstrip().splitlines()
        # the last four lines are the panel: its title, the export line, the owner, its foot
        assert lines[-4].startswith("╭─ loracle is ready on " + url), output
        assert lines[-3].startswith(f"│ export LORACLE_API_KEY={key}"), output
        assert lines[-2].startswith("│ owner default; only its digest is kept (loracle keys list)")
        assert lines[-1].startswith("╰"), output
        assert "worker ready: queues loracle.cpu-" in output and "Uvicorn running on" in output
        run_a_job(url, key, tiny_model, datasets["text"])
        time.sleep(1)
        output = log_path.read_text()
    for noise in NOISE:
        assert noise not in output, f"{noise!r} in:\n{output}"


def test_log_format_json_gives_one_object_per_line_from_every_process(
    tmp_path: Path, model_root: Path, tiny_model: Path, datasets: dict[str, Path]
):
    """Also: with a key already in the key file, `up` makes none and its panel says where
    the keys are."""
    made = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "create", "--json"],
        cwd=ROOT,
        env={**os.environ, "LORACLE_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    key = json.loads(made.stdout)["key"]
    out_path, err_path = tmp_path / "up.out", tmp_path / "up.err"
    with (
        out_path.open("w") as out,
        err_path.open("w") as err,
        loracle_up(tmp_path, model_root, "--log-format", "json", stdout=out, stderr=err) as url,
    ):
        deadline = time.monotonic() + 180
        while "╰" not in out_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.3)
        panel = " ".join(out_path.read_text().split())
        assert panel.startswith(f"╭─ loracle is ready on {url}"), panel
        assert "API keys: 1 in" in panel and "export LORACLE_API_KEY" not in panel
        run_a_job(url, key, tiny_model, datasets["text"])
        time.sleep(1)
    records = []
    for line in err_path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)  # every line: a whole JSON object
            assert {"time", "level", "logger", "process", "pid", "message"} <= set(record), record
            records.append(record)
    loggers = {r["logger"] for r in records}
    messages = " ".join(r["message"] for r in records)
    # the API (uvicorn's own and access log), the worker (Celery's and loracle's), `up` itself
    assert {"uvicorn.error", "uvicorn.access", "loracle.worker", "loracle"} <= loggers, loggers
    assert "worker ready: queues loracle.cpu-" in messages and "loracle: data in" in messages
    assert any("Task loracle.run_job" in r["message"] for r in records), messages
    assert key not in err_path.read_text()


def test_the_filters_drop_only_the_known_messages():
    """Each filter is narrow: the same library's other messages still show. (bitsandbytes'
    message only appears on a CPU with AVX512-BF16, so it is sent here by hand.)"""
    script = """
import logging, sys, warnings
from cli.logs import quiet_third_parties
warnings.simplefilter("default")  # every warning shown, but for what quiet filters
quiet_third_parties()
logging.basicConfig(stream=sys.stdout, format="%(name)s: %(message)s")
bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
bnb.warning(
    "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
    "already `pip install kernels` and the kernels >= 0.11.1",
    ModuleNotFoundError("No module named 'kernels'"),
)
bnb.warning("another bitsandbytes warning")
logging.getLogger("kombu.connection").warning(
    "No hostname was supplied. Reverting to default 'localhost'"
)
logging.getLogger("celery.apps.worker").warning("%s ready.", "celery@host")
warnings.warn(
    "`gradient_checkpointing` is deprecated and will be removed in v6. Use "
    "`activation_checkpointing` instead.",
    FutureWarning,
)
for name in ("is_gradient_checkpointing", "gradient_checkpointing_kwargs", "something_else"):
    warnings.warn(f"`{name}` is deprecated and will be removed in v6.", FutureWarning)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    shown = done.stdout + done.stderr
    assert "another bitsandbytes warning" in shown and "`something_else` is deprecated" in shown
    for dropped in ("kernels", "No hostname", "ready.", "gradient_checkpointing"):
        assert dropped not in shown, shown


def test_installing_prints_no_licence_warning():
    """`make run` installs the package first; setuptools reads pyproject.toml's licence
    without its deprecation warning (a table there warns on every install)."""
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert not [w for w in caught if "license" in str(w.message).lower()], caught
    assert dist.metadata.license_expression == "Apache-2.0"
