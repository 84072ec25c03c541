"""`loracle workers` against a running service with a CPU worker of a 24 GiB budget."""

from __future__ import annotations

import json
import time

import pytest

from tests.cli.conftest import Loracle, flat
from tests.utils.service import Service

pytestmark = pytest.mark.e2e


def test_workers_lists_the_registered_worker_and_json_is_the_apis_answer(
    loracle: Loracle, cli_service: Service
):
    deadline = time.monotonic() + 60
    with cli_service.client() as api:
        while not (listed := api.get("/v1/workers").json())["data"]:
            assert time.monotonic() < deadline, cli_service.log_tail()
            time.sleep(0.5)
    (worker,) = listed["data"]
    assert worker["card_class"] == "cpu-24g" and worker["device"] == "cpu"
    assert worker["cards"][0]["total_gib"] == 24 and worker["queues"] == ["loracle.cpu-24g.x1"]
    r = loracle("workers", "--json")
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)
    assert [w["id"] for w in again["data"]] == [worker["id"]]
    out = flat(loracle("workers").output)
    assert worker["id"] in out and "cpu-24g" in out and "/24 GiB free" in out
    # A worker with no GPU says so first, before anything else it logs.
    assert cli_service.logs is not None
    lines = [ln for ln in (cli_service.logs / "worker-0.log").read_text().splitlines() if ln]
    assert lines[0].startswith("no CUDA GPU visible to this worker"), lines[:3]
    assert "jobs run on the CPU in fp32, within a 24 GiB budget" in lines[0]


def test_calibration_says_when_nothing_is_measured_and_shows_groups_and_margins_when_it_is(
    loracle: Loracle, cli_service: Service
):
    from loracle.calibration import MIN_JOBS
    from loracle.store.db import session
    from tests.utils.api import settings_for
    from tests.utils.builders import add_measured_job

    with cli_service.client() as api:
        empty = api.get("/v1/calibration").json()
    r = loracle("calibration", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == empty
    if not empty["data"]:  # the CPU worker's own jobs are not CUDA measurements
        assert "no job has been measured on a CUDA card yet" in flat(loracle("calibration").output)

    url = settings_for(cli_service.data_dir).resolved_database_url
    with session(url) as s:
        for reserved in [10.0] * (MIN_JOBS - 1) + [10.8]:
            add_measured_job(s, "NVIDIA L4", 22.05, 10.0, reserved)
    out = flat(loracle("calibration").output)
    assert "NVIDIA L4 llama 32x4096 LoRA 20 +0.0% -7.4%" in out, out
    assert "NVIDIA L4: fit margin 8%, its own, from 20 jobs" in out
