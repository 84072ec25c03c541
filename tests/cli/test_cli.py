from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_advise_prints_table_path_and_hyperparameters():
    r = runner.invoke(
        app,
        [
            "advise",
            "--model",
            "meta-llama/Llama-2-7b-hf",
            "--gpu",
            "rtx-4090",
            "--priority",
            "speed",
        ],
    )
    assert r.exit_code == 0, r.output
    for text in ("LoRA+", "qlora", "dora", "Decision path", "Hyperparameters", "█"):
        assert text in r.output


def test_advise_json_is_the_api_answer(client):
    argv = [
        "advise",
        "--model",
        "Qwen/Qwen2.5-7B",
        "--gpu",
        "t4",
        "--priority",
        "quality",
        "--quality-gap",
        "--seq-len",
        "1024",
        "--json",
    ]
    r = runner.invoke(app, argv)
    assert r.exit_code == 0, r.output
    api = client.post(
        "/v1/recommendations",
        json={
            "hardware": {"gpu": "t4"},
            "model": {"name": "Qwen/Qwen2.5-7B"},
            "training": {"seq_len": 1024},
            "goal": {"priority": "quality", "lora_quality_gap": True},
        },
    ).json()
    assert json.loads(r.output) == api


def test_advise_serve_with_is_the_api_answer_and_a_bad_one_names_the_flag(client):
    argv = ["advise", "--model", "meta-llama/Llama-2-7b-hf", "--gpu", "a100-80gb"]
    argv += ["--priority", "quality", "--quality-gap", "--serve-with", "vllm"]
    r = runner.invoke(app, [*argv, "--json"])
    assert r.exit_code == 0, r.output
    answer = json.loads(r.output)
    api = client.post(
        "/v1/recommendations",
        json={
            "hardware": {"gpu": "a100-80gb"},
            "model": {"name": "meta-llama/Llama-2-7b-hf"},
            "goal": {"priority": "quality", "lora_quality_gap": True, "serve_with": "vllm"},
        },
    ).json()
    assert answer == api and answer["variant"] == "dora"
    assert answer["decision_path"][-1]["question"] == "Does vLLM load the DoRA adapter as it is?"
    r = runner.invoke(app, argv)  # the readable answer shows the step and the merge note
    out = " ".join(r.output.split())
    assert r.exit_code == 0 and "Does vLLM load the DoRA adapter as it is? no" in out
    assert "merge a DoRA adapter before serving with vLLM" in out
    r = runner.invoke(app, [*argv[:-2], "--serve-with", "tgi"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "error --serve-with: " in out and "goal.serve_with" not in out
    assert "'vllm'" in out and "'llama.cpp'" in out and "(got 'tgi')" in out


def test_estimate_json_is_the_api_answer(client):
    r = runner.invoke(
        app,
        [
            "estimate",
            "--model",
            "Qwen/Qwen2.5-7B",
            "--variant",
            "qlora",
            "--combine-with",
            "dora",
            "--gpu",
            "a10g",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    api = client.post(
        "/v1/estimates",
        json={
            "model": {"name": "Qwen/Qwen2.5-7B"},
            "variant": "qlora",
            "combine_with": ["dora"],
            "hardware": {"gpu": "a10g"},
        },
    ).json()
    assert json.loads(r.output) == api


def test_cli_errors_name_the_flag_and_exit_2():
    """The advisor's problems are reported under the flags that give their fields
    (hardware.gpu is --gpu), not the API's names."""
    r = runner.invoke(app, ["advise", "--model", "llama-9b", "--gpu", "rtx-4O90"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2
    assert "error --gpu: unknown GPU 'rtx-4O90'" in out and "error --model: " in out
    assert "hardware.gpu" not in out and "model.name" not in out and "model.config" not in out
    r = runner.invoke(
        app, ["advise", "--model", "meta-llama/Llama-2-7b-hf", "--gpu", "t4", "--seq-len", "0"]
    )
    assert r.exit_code == 2 and "error --seq-len: " in r.output
    assert "training.seq_len" not in r.output
    r = runner.invoke(
        app, ["estimate", "--model", "meta-llama/Llama-2-7b-hf", "--gpu-memory", "-3"]
    )
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "error --gpu-memory: " in out and "gpu_memory_gib" not in out


def test_local_model_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    r = runner.invoke(app, ["estimate", "--model", str(tmp_path)])
    # a field inside the config.json that --model named
    assert r.exit_code == 2 and "--model (vocab_size)" in r.output


def test_config_json_that_is_not_an_object_is_a_clear_error(tmp_path):
    """A config.json holding an array (or any non-object) is refused by name, with exit code 2
    and no traceback."""
    for content, kind in (("[1, 2]", "an array"), ('"llama"', "a string"), ("7", "a number")):
        path = tmp_path / "config.json"
        path.write_text(content)
        for command in ("advise", "estimate"):
            r = runner.invoke(app, [command, "--model", str(path), "--gpu", "t4"])
            assert r.exit_code == 2, r.output
            assert isinstance(r.exception, SystemExit)  # a usage error, not a crash
            assert f"holds {kind}, not a JSON object" in " ".join(r.output.split())


def test_config_json_that_cannot_be_read_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_bytes(b'{"model_type": "llama\xff"}')
    r = runner.invoke(app, ["advise", "--model", str(tmp_path), "--gpu", "t4"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit)
    assert "cannot read" in r.output


def test_config_json_with_nan_names_the_key(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "hidden_size": float("nan")})
    )
    r = runner.invoke(app, ["estimate", "--model", str(tmp_path)])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit)
    assert "--model" in r.output and "hidden_size" in r.output


def test_refused_settings_are_one_line_each_and_exit_2_without_a_traceback(tmp_path):
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "LORACLE_DATA_DIR": str(tmp_path),
        "LORACLE_AUTH_DISABLED": "1",
        "LORACLE_HEARTBEAT_S": "100",
    }
    for command in ("serve", "worker"):
        done = subprocess.run(
            [sys.executable, "-m", "cli", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert "LORACLE_HEARTBEAT_S=100 must be shorter than LORACLE_LEASE_TTL_S" in done.stderr
        assert "Traceback" not in done.stderr + done.stdout


def test_jobs_submit_sends_serve_with_in_the_profiles_goal():
    from cli.jobs import SUBMIT_FIELDS

    assert SUBMIT_FIELDS.body({"serve_with": "sglang", "priority": "quality"}) == {
        "profile": {"goal": {"serve_with": "sglang", "priority": "quality"}}
    }
    r = runner.invoke(app, ["jobs", "submit", "--help"])
    assert r.exit_code == 0 and "--serve-with" in r.output
