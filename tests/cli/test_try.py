"""`loracle jobs try` against a running service: the base's and the adapter's completions side
by side, --json as the API answered, and errors under the command's own flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Loracle, flat
from tests.utils.api import KEY_B
from tests.utils.service import Service

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained(cli_service: Service, tiny_model: Path, train_file: Path) -> dict[str, Any]:
    """A job trained on the cycle task until its adapter continues it."""
    file_id = cli_service.upload(train_file)["id"]
    job = cli_service.submit(
        {
            "model": str(tiny_model),
            "training_file": file_id,
            "variant": "lora",
            "hyperparameters": {"max_steps": 30, "seq_len": 32, "learning_rate": 1e-2},
        }
    )
    done = cli_service.wait(job["id"])
    assert done["status"] == "succeeded", cli_service.log_tail()
    return done


def test_try_prints_base_and_adapter_side_by_side(
    loracle: Loracle, cli_service: Service, trained: dict[str, Any]
):
    r = loracle("jobs", "try", trained["id"], "alpha bravo charlie", "--max-new-tokens", "4")
    assert r.exit_code == 0, r.output + cli_service.log_tail()
    out = flat(r.output)
    assert "prompt" in out and "base" in out and f"adapter ({trained['id']})" in out, out
    assert "delta echo foxtrot golf" in out, out
    assert "cpu, original base weights; loaded in" in out


def test_try_json_is_the_apis_answer_and_repeats_with_a_seed(
    loracle: Loracle, trained: dict[str, Any]
):
    args = ["jobs", "try", trained["id"], "alpha", "echo", "--temperature", "1.2", "--seed", "9"]
    one = json.loads(loracle(*args, "--json").output)
    two = json.loads(loracle(*args, "--json").output)
    assert one["status"] == "succeeded" and one["temperature"] == 1.2 and one["seed"] == 9
    assert [c["prompt"] for c in one["completions"]] == ["alpha", "echo"]
    assert one["completions"] == two["completions"]


def test_try_errors_name_the_flags_and_the_limit(loracle: Loracle, trained: dict[str, Any]):
    r = loracle("jobs", "try", trained["id"], "alpha", "--temperature", "3")
    out = flat(r.output)
    assert r.exit_code == 2 and "--temperature:" in out, out
    r = loracle("jobs", "try", trained["id"], " ".join(["alpha"] * 600))
    out = flat(r.output)
    assert r.exit_code == 2 and "PROMPTS (0):" in out, out
    assert "more than the 448" in out and "context of 512" in out, out
    r = loracle("jobs", "try", trained["id"], "alpha", key=KEY_B)
    assert r.exit_code == 1 and "no job" in r.output
