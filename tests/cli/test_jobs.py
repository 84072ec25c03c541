"""`loracle jobs ...` against a running service: submit, watch, get, list, events, download,
cancel; --json is the API's answer; errors name the command's flags."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Loracle, flat
from tests.utils.service import ADAPTER_FILES, Service, free_port

pytestmark = pytest.mark.e2e

FAST = ["--max-steps", "24", "--seq-len", "48", "--learning-rate", "5e-3", "--logging-steps", "1"]


def job_id_in(output: str) -> str:
    found = re.search(r"job-[0-9a-f]{24}", output)
    assert found, output
    return found.group(0)


@pytest.fixture(scope="module")
def finished(cli_service: Service, tiny_model: Path, datasets: dict[str, Path]) -> dict[str, Any]:
    """A job that succeeded, submitted over the API (not through the commands under test)."""
    file_id = cli_service.upload(datasets["text"])["id"]
    job = cli_service.submit(
        {
            "model": str(tiny_model),
            "training_file": file_id,
            "variant": "lora",
            "hyperparameters": {"max_steps": 12, "seq_len": 48, "logging_steps": 1},
        }
    )
    done = cli_service.wait(job["id"])
    assert done["status"] == "succeeded", cli_service.log_tail()
    return done


def test_submit_uploads_a_local_file_and_watch_follows_to_the_end(
    loracle: Loracle, cli_service: Service, tiny_model: Path, datasets: dict[str, Path]
):
    r = loracle(
        "jobs",
        "submit",
        "--model",
        str(tiny_model),
        "--file",
        str(datasets["prompt_completion"]),
        "--variant",
        "lora",
        *FAST,
        "--watch",
    )
    assert r.exit_code == 0, r.output + cli_service.log_tail()
    job_id = job_id_in(r.output)
    out = flat(r.output)
    assert "uploaded" in out and "(64 rows)" in out
    # the live view: the bar at its end with step and loss, the events above it, the outcome
    assert "24/24 loss" in out and "ETA" in out
    assert "job running on" in out and "training finished" in out
    assert f"{job_id} succeeded at step 24, loss" in out
    assert f"loracle jobs download {job_id}" in out
    job = cli_service.job(job_id)
    assert job["status"] == "succeeded" and job["step"] == 24
    assert job["hyperparameters"]["seq_len"] == 48 and job["variant"] == "lora"
    assert f"loss {job['loss']:.4f}" in out


def test_json_output_is_the_apis_answer(
    loracle: Loracle, cli_service: Service, finished: dict[str, Any]
):
    job_id = finished["id"]
    with cli_service.client() as api:
        for args, path in (
            (("jobs", "get", job_id), f"/v1/jobs/{job_id}"),
            (("jobs", "list"), "/v1/jobs"),
            (("jobs", "list", "--status", "succeeded", "--limit", "1"), "/v1/jobs"),
            (("jobs", "events", job_id), f"/v1/jobs/{job_id}/events"),
            (
                ("jobs", "events", job_id, "--after", "3", "--limit", "2"),
                f"/v1/jobs/{job_id}/events",
            ),
        ):
            r = loracle(*args, "--json")
            assert r.exit_code == 0, r.output
            params = {"status": "succeeded", "limit": 1} if "--status" in args else {}
            if args[1] == "events":
                params = {"after": 3, "limit": 2} if "--after" in args else {"limit": 1000}
            assert json.loads(r.stdout) == api.get(path, params=params).json(), args


def test_watch_of_a_finished_job_replays_it_and_exits_0(loracle: Loracle, finished: dict[str, Any]):
    r = loracle("jobs", "watch", finished["id"])
    assert r.exit_code == 0, r.output
    assert f"{finished['id']} succeeded at step 12" in flat(r.output)
    r = loracle("jobs", "watch", finished["id"], "--json")
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.exit_code == 0, r.output
    assert [e["data"]["step"] for e in lines if e["type"] == "metrics"] == list(range(1, 13))
    assert any(e["type"] == "status" and e["data"]["status"] == "succeeded" for e in lines)


def test_readable_get_list_and_events(loracle: Loracle, finished: dict[str, Any]):
    job_id = finished["id"]
    out = flat(loracle("jobs", "get", job_id).output)
    assert "succeeded" in out and "step 12/12" in out
    assert "estimated for a CUDA card" in out and "process growth on the CPU" in out
    assert "ran on" in out and "cpu (" in out and "fp32" in out
    out = flat(loracle("jobs", "list", "--status", "succeeded").output)
    assert job_id in out
    out = flat(loracle("jobs", "events", job_id).output)
    assert "job created and queued" in out and "step 12/12 loss" in out


def test_download_gets_the_adapter_bytes(
    loracle: Loracle, cli_service: Service, finished: dict[str, Any], tmp_path: Path
):
    job_id = finished["id"]
    r = loracle("jobs", "download", job_id, "--output", str(tmp_path / "all"))
    assert r.exit_code == 0, r.output
    got = {p.name for p in (tmp_path / "all").iterdir()}
    assert ADAPTER_FILES <= got and not any(n.endswith(".part") for n in got)
    with cli_service.client() as api:
        for name in got:
            served = api.get(f"/v1/jobs/{job_id}/artifacts/{name}").content
            assert (tmp_path / "all" / name).read_bytes() == served, name
    # one named artifact; --json prints the API's listing
    r = loracle(
        "jobs",
        "download",
        job_id,
        "adapter_model.safetensors",
        "-o",
        str(tmp_path / "one"),
        "--json",
    )
    assert r.exit_code == 0, r.output
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["adapter_model.safetensors"]
    with cli_service.client() as api:
        assert json.loads(r.stdout) == api.get(f"/v1/jobs/{job_id}/artifacts").json()
    r = loracle("jobs", "download", job_id, "nope.bin", "-o", str(tmp_path / "none"))
    assert r.exit_code == 2 and "adapter_model.safetensors" in flat(r.output)


def test_cancel_stops_a_running_job(
    loracle: Loracle, cli_service: Service, tiny_model: Path, datasets: dict[str, Path]
):
    file_id = cli_service.upload(datasets["text"])["id"]
    r = loracle(
        "jobs", "submit", "--model", str(tiny_model), "--file", file_id, "--variant", "lora",
        "--max-steps", "5000", "--seq-len", "48", "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    job_id = json.loads(r.stdout)["id"]
    cli_service.wait(job_id, until=lambda j: j["status"] == "running" and j["step"] > 0)
    r = loracle("jobs", "cancel", job_id)
    assert r.exit_code == 0, r.output
    assert job_id in r.output and ("cancel requested" in flat(r.output) or "cancelled" in r.output)
    r = loracle("jobs", "watch", job_id)
    assert r.exit_code == 1, r.output
    assert f"{job_id} cancelled" in flat(r.output)
    assert cli_service.job(job_id)["status"] == "cancelled"
    r = loracle("jobs", "cancel", job_id)
    assert r.exit_code == 1 and "already cancelled" in r.output


def test_errors_name_the_flags_not_the_api_fields(
    loracle: Loracle, tiny_model: Path, finished: dict[str, Any]
):
    base = ["jobs", "submit", "--model", str(tiny_model), "--file", finished["training_file"]]
    # Typer's own check of an option's type
    r = loracle(*base, "--variant", "lora", "--seq-len", "x")
    assert r.exit_code == 2 and "--seq-len" in r.output
    # the API's range check, reported under the flag
    r = loracle(*base, "--variant", "lora", "--seq-len", "1")
    out = flat(r.output)
    assert r.exit_code == 2, out
    assert "--seq-len:" in out and "greater than or equal to 2" in out
    assert "hyperparameters.seq_len" not in out
    r = loracle(*base, "--variant", "lora", "--lora-dropout", "1.5", "--max-steps", "0")
    out = flat(r.output)
    assert r.exit_code == 2 and "--lora-dropout:" in out and "--max-steps:" in out, out
    # variant auto needs the card: the API's problem names profile.hardware
    r = loracle(*base)
    out = flat(r.output)
    assert r.exit_code == 2 and "--gpu/--gpu-memory:" in out, out
    assert "profile.hardware" not in out
    r = loracle(*base, "--gpu-memory", "-1")
    out = flat(r.output)
    assert r.exit_code == 2 and "--gpu-memory:" in out and "gpu_memory_gib" not in out, out
    r = loracle("jobs", "submit", "--model", str(tiny_model), "--file", "file-" + "0" * 24)
    assert r.exit_code == 2 and "--file:" in flat(r.output), r.output
    r = loracle("jobs", "get", "job-" + "0" * 24)
    assert r.exit_code == 1 and "no job" in r.output


def test_a_refused_key_and_an_absent_service_are_said_plainly(
    loracle: Loracle, finished: dict[str, Any]
):
    r = loracle("jobs", "list", key="lor_not_a_key")
    assert r.exit_code == 1 and "--api-key" in flat(r.output) and "LORACLE_API_KEY" in r.output
    r = loracle("jobs", "list", key=None)
    assert r.exit_code == 1 and "--api-key" in flat(r.output)
    url = f"http://127.0.0.1:{free_port()}"
    r = loracle("jobs", "get", finished["id"], url=url)
    out = flat(r.output)
    assert r.exit_code == 1 and f"cannot reach loracle at {url}" in out and "LORACLE_URL" in out
    assert "Traceback" not in r.output
