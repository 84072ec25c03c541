"""`python -m worker train`, run the way a user (or the run record) says to run it."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.utils.builders import plan_dict


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_train_prints_result_and_the_record_reproduces_it(tiny_model, data_dir, tmp_path):
    plan_file = tmp_path / "plan.json"
    output_dir = tmp_path / "run"
    plan_file.write_text(
        json.dumps(plan_dict(tiny_model, data_dir / "text.jsonl", output_dir, max_steps=5))
    )
    done = run_cli("train", "--plan", str(plan_file), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout holds the result and nothing else
    assert result["status"] == "succeeded" and result["steps"] == 5
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith('{"event"')]
    assert [e["event"] for e in events][-1] == "finished"

    # The record's own command, run where the record lies, reruns the same plan.
    adapter = output_dir / "adapter"
    record = json.loads((adapter / "plan.json").read_text())
    python, dash_m, module, *args = record["command"].split()
    assert (python, dash_m, module) == ("python", "-m", "worker")
    again = run_cli(*args, "--no-resume", cwd=adapter)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["final_loss"] == result["final_loss"]


def test_refused_plan_exits_2_with_one_error_shape(tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"model": "org/name", "variant": "qlora", "seq_len": 0}))
    done = run_cli("train", "--plan", str(plan_file), cwd=tmp_path)
    assert done.returncode == 2
    error = json.loads(done.stdout)
    assert error["error"] == "PlanError"
    for field in ("train_file", "output_dir", "seq_len"):
        assert f"- {field}:" in error["detail"]
