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
