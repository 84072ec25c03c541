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
from cli.main import app
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
        [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
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
    # the advisor's lines, which need no service (the job commands: test_job_commands_run)
    lines = [
        line
        for block in _blocks("sh")
        for line in block.splitlines()
        if line.startswith((".venv/bin/loracle advise ", ".venv/bin/loracle estimate "))
    ]
    assert len(lines) >= 4
    runner = CliRunner()
    for line in lines:
        argv = shlex.split(line.replace("./path/to/model-dir", str(model_dir)))[1:]
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, f"{line}\n{result.output}"
        if "--json" in argv:
            json.loads(result.output)


def _block(needle: str) -> str:
    return next(b for b in _blocks("sh") if needle in b)


def test_the_first_job_example_is_the_offline_demo():
    """A new user's first job needs no network: `make demo` comes before the hub example
    (the curl walkthrough) and the job commands."""
    shell = _blocks("sh")
    demo = shell.index("make demo\n")
    assert demo < shell.index(_block("$API/files")) and demo < shell.index(_block("jobs submit"))
    assert README.index("## Quick start offline") < README.index("## Run a fine-tuning job")
    assert "$(BIN)/loracle demo" in (ROOT / "Makefile").read_text()  # run: tests/cli/test_demo


@pytest.mark.e2e
def test_job_commands_run(
    tmp_path: Path, model_root: Path, tiny_model: Path, datasets: dict[str, Path]
):
    """The Command line part's job block, run in bash as written against a real API and
    worker (the hub model swapped for the tiny local one), and the error it quotes."""
    from tests.utils.service import Service

    service = Service.create(tmp_path / "service", model_root)
    service.start_api()
    service.start_worker()
    try:
        work = tmp_path / "user"
        work.mkdir()
        (work / "train.jsonl").write_bytes(datasets["text"].read_bytes())
        loracle = f"{sys.executable} -m cli"
        script = (
            _block("jobs submit")
            .replace(".venv/bin/loracle", loracle)
            .replace("Qwen/Qwen2.5-0.5B", str(tiny_model))
        )
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LORACLE_URL": service.url,
            "LORACLE_API_KEY": KEY_A,
            "COLUMNS": "200",
        }
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr + service.log_tail()
        assert "succeeded" in done.stdout and "advisor" in done.stdout
        assert (work / "adapter" / "adapter_model.safetensors").stat().st_size > 1000
        assert (work / "merged" / "model.safetensors").stat().st_size > 1000  # jobs merge
        assert (work / "merged" / "config.json").is_file()

        quoted = re.search(r"\(`(--seq-len: [^`]+)`\)", README, flags=re.S)
        assert quoted, "the README quotes a refused request"
        refused = subprocess.run(
            [sys.executable, "-m", "cli", "jobs", "submit", "--model", str(tiny_model),
             "--file", "train.jsonl", "--variant", "lora", "--seq-len", "1"],
            cwd=work, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert refused.returncode == 2
        assert " ".join(quoted.group(1).split()) in " ".join(refused.stderr.split())
    finally:
        service.stop()


def test_keys_and_service_lines_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LORACLE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LORACLE_API_KEY_HASHES", raising=False)
    get_settings.cache_clear()
    runner = CliRunner()
    lines = _block("keys create").splitlines()
    for line in lines:
        result = runner.invoke(app, shlex.split(line)[1:])
        assert result.exit_code == 0, f"{line}\n{result.output}"
    assert "alice" not in runner.invoke(app, ["keys", "list"]).output  # revoked
    # the processes' lines name options that exist (--help stops before they would start)
    for line in _block("loracle serve").splitlines():
        result = runner.invoke(app, [*shlex.split(line)[1:], "--help"])
        assert result.exit_code == 0, f"{line}\n{result.output}"


def teardown_module() -> None:
    get_settings.cache_clear()


def test_the_decision_tree_is_the_advisors():
    """The README's tree is produced from the advisor's questions (advisor.decide.QUESTIONS),
    so the two cannot drift apart."""
    from advisor.decide import tree_markdown

    assert tree_markdown() in README


def test_the_serving_table_is_the_advisors():
    """The README's table of servers is produced from the one the advisor reads
    (advisor.serving.SERVERS)."""
    from advisor.serving import table_markdown

    assert table_markdown() in README


def test_the_job_examples_run_as_written_sdk_first_then_curl(
    tmp_path: Path, model_root: Path, tiny_model: Path, datasets: dict[str, Path]
):
    """ "Run a fine-tuning job": the openai SDK block comes first and the curl block second;
    both run as written against a real API and worker (the hub model swapped for the tiny
    local one, the address for the test service's), and the curl block stops on an error
    answer and prints its JSON."""
    from tests.utils.service import Service

    section = README[README.index("## Run a fine-tuning job") :]
    python, shell = _blocks("python")[0], _block("$API/files")
    assert section.index(python) < section.index(shell)

    service = Service.create(tmp_path / "service", model_root)
    service.start_api()
    service.start_worker()
    try:
        work = tmp_path / "user"
        work.mkdir()
        (work / "train.jsonl").write_bytes(datasets["text"].read_bytes())
        env = {**os.environ, "LORACLE_API_KEY": KEY_A}

        def as_here(text: str) -> str:
            return text.replace("http://127.0.0.1:8000", service.url).replace(
                "Qwen/Qwen2.5-0.5B", str(tiny_model)
            )

        ran = subprocess.run(
            [sys.executable, "-c", as_here(python)],
            cwd=work, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr + service.log_tail()
        assert "succeeded ft:" in ran.stdout and "training finished" in ran.stdout
        adapter = work / "adapter_model.safetensors"
        assert adapter.stat().st_size > 1000
        adapter.unlink()

        ran = subprocess.run(
            ["bash", "-c", as_here(shell)],
            cwd=work, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr + service.log_tail()
        assert '"status": "succeeded"' in ran.stdout and "training finished" in ran.stdout
        assert adapter.stat().st_size > 1000

        # A refused submission stops the script at once, with the API's error on stderr.
        broken = as_here(shell).replace('"seq_len": 64', '"seq_len": "64"')
        ran = subprocess.run(
            ["bash", "-c", broken],
            cwd=work, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert ran.returncode != 0
        error = json.loads(ran.stderr.strip().splitlines()[-1])
        assert error["error"]["param"] == "hyperparameters.seq_len", error
        assert "events" not in ran.stdout and "null" not in ran.stdout
    finally:
        service.stop()


@pytest.mark.e2e
def test_the_merge_example_runs_as_written(
    tmp_path: Path, model_root: Path, tiny_model: Path, datasets: dict[str, Path]
):
    """ "After training: merge and export": its curl block, run in bash as written against a
    real API and worker for a succeeded QLoRA job, leaves a model transformers loads, and a
    job trains on the `into_model_root` name it gave."""
    from tests.utils.service import Service

    section = README[README.index("## After training: merge and export") :]
    shell = next(b for b in _blocks("sh") if "/merge" in b and b in section)
    service = Service.create(tmp_path / "service", model_root)
    service.start_api()
    service.start_worker()
    try:
        file_id = service.upload(datasets["text"])["id"]
        body = {
            "model": str(tiny_model),
            "training_file": file_id,
            "hyperparameters": {"max_steps": 4},
        }
        job = service.submit({**body, "variant": "qlora"})
        assert service.wait(job["id"])["status"] == "succeeded", service.log_tail()
        work = tmp_path / "user"
        work.mkdir()
        env = {**os.environ, "LORACLE_API_KEY": KEY_A, "JOB": job["id"]}
        ran = subprocess.run(
            ["bash", "-c", shell.replace("http://127.0.0.1:8000", service.url)],
            cwd=work, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr + service.log_tail()
        assert '"status": "succeeded"' in ran.stdout and "nf4-dequantized" in ran.stdout
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(work / f"{job['id']}-merged")
        again = service.submit({**body, "model": "my-merged-model", "variant": "lora"})
        assert service.wait(again["id"])["status"] == "succeeded", service.log_tail()
    finally:
        service.stop()


@pytest.mark.e2e
def test_the_try_example_runs_as_written(tmp_path: Path, model_root: Path, tiny_model: Path):
    """ "After training: try it": its curl block, run in bash as written against a real API
    and worker for `make demo`'s job (its data and settings, on the same tiny model), shows
    the adapter continuing the cycle where the base does not."""
    from cli.demo import DEMO_JOB, demo_data
    from cli.jobs import SUBMIT_FIELDS
    from tests.utils.service import Service

    section = README[README.index("## After training: try it") :]
    shell = next(b for b in _blocks("sh") if "/try" in b and b in section)
    service = Service.create(tmp_path / "service", model_root)
    service.start_api()
    service.start_worker()
    try:
        file_id = service.upload(demo_data(tmp_path))["id"]
        values = {**DEMO_JOB, "model": str(tiny_model), "training_file": file_id}
        job = service.submit(SUBMIT_FIELDS.body(values))  # what `loracle demo` submits
        assert service.wait(job["id"])["status"] == "succeeded", service.log_tail()
        env = {**os.environ, "LORACLE_API_KEY": KEY_A, "JOB": job["id"]}
        ran = subprocess.run(
            ["bash", "-c", shell.replace("http://127.0.0.1:8000", service.url)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr + service.log_tail()
        shown = json.loads(ran.stdout)
        assert shown["status"] == "succeeded" and shown["error"] is None, shown
        completion = shown["completions"][0]
        assert completion["adapter"].split()[:3] == ["charlie", "delta", "echo"], completion
        assert not completion["base"].startswith(" charlie delta"), completion
    finally:
        service.stop()
