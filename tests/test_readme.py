"""The README's commands and examples are what a user runs: run them."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from api.security import digest
from loracle.cli import app
from loracle.settings import get_settings
from tests.utils.api import KEY_A

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def contains(expected, actual, where="answer"):
    """``expected`` is an abridged copy of ``actual``: dict keys are a subset, list
    items appear in order, scalars are equal."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} missing"
            contains(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list) and expected and isinstance(expected[0], dict):
        remaining = list(actual)
        for item in expected:
            while remaining:
                candidate = remaining.pop(0)
                try:
                    contains(item, candidate, where)
                    break
                except AssertionError:
                    continue
            else:
                raise AssertionError(f"{where}: {item} not found in order")
    else:
        assert expected == actual, f"{where}: README says {expected!r}, service says {actual!r}"


def test_first_two_commands_are_make_run_and_make_test():
    shell = _blocks("sh")
    assert shell[0].strip() == "make run"
    assert shell[1].strip() == "make test"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec make test" in ci


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    env = {
        **os.environ,
        "LORACLE_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "LORACLE_API_KEY_HASHES": digest(KEY_A),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "loracle.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "server did not start")
    yield base
    proc.terminate()
    proc.wait(timeout=10)


def test_curl_example_gives_the_answer_shown(server):
    curl = next(b for b in _blocks("sh") if "/v1/recommendations" in b)
    args = shlex.split(curl.replace("\\\n", " "))
    url = next(a for a in args if a.startswith("http")).replace("http://127.0.0.1:8000", server)
    body = json.loads(args[args.index("-d") + 1])
    assert '"Authorization: Bearer $LORACLE_API_KEY"' in curl
    headers = {"Authorization": f"Bearer {KEY_A}"}
    assert httpx.post(url, json=body, timeout=10).status_code == 401
    answer = httpx.post(url, json=body, headers=headers, timeout=10).json()
    shown = json.loads(_blocks("json")[0])
    contains(shown, answer)


def test_cli_lines_run(tmp_path, monkeypatch):
    # `estimate --trace` keeps its cache in the data directory: a fresh one, as on a new machine
    monkeypatch.setenv("LORACLE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    model_dir = tmp_path / "model-dir"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 2048,
                "intermediate_size": 5632,
                "num_hidden_layers": 22,
                "num_attention_heads": 32,
                "num_key_value_heads": 4,
                "vocab_size": 32000,
            }
        )
    )
    lines = [
        line
        for block in _blocks("sh")
        for line in block.splitlines()
        if line.startswith(".venv/bin/loracle ") and " serve" not in line
    ]
    assert len(lines) >= 3
    runner = CliRunner()
    for line in lines:
        argv = shlex.split(line.replace("./path/to/model-dir", str(model_dir)))[1:]
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, f"{line}\n{result.output}"
        if "--json" in argv:
            json.loads(result.output)


def teardown_module() -> None:
    get_settings.cache_clear()
