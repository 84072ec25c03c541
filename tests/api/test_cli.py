from __future__ import annotations

import json

from typer.testing import CliRunner

from loracle.cli import app

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


def test_cli_errors_name_the_field_and_exit_2():
    r = runner.invoke(app, ["advise", "--model", "llama-9b", "--gpu", "rtx-4O90"])
    assert r.exit_code == 2
    assert "hardware.gpu" in r.output and "model.name" in r.output
    r = runner.invoke(
        app, ["advise", "--model", "meta-llama/Llama-2-7b-hf", "--gpu", "t4", "--seq-len", "0"]
    )
    assert r.exit_code == 2 and "training.seq_len" in r.output


def test_local_model_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    r = runner.invoke(app, ["estimate", "--model", str(tmp_path)])
    assert r.exit_code == 2 and "model.config.vocab_size" in r.output


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
    assert "model.config" in r.output and "hidden_size" in r.output


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
            [sys.executable, "-m", "loracle.cli", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert "LORACLE_HEARTBEAT_S=100 must be shorter than LORACLE_LEASE_TTL_S" in done.stderr
        assert "Traceback" not in done.stderr + done.stdout
