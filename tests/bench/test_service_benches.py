"""The service's benchmarks run end to end and write their results in the shape the docs
quote (docs/performance.md). Smoke runs: a few steps and short rounds, into a temporary
folder; their figures are the benchmarks' to report, not the tests' to judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import advice, training

pytestmark = pytest.mark.slow


def test_advice_benchmark_writes_its_ratios(tmp_path: Path):
    figures = advice.main(["--seconds", "0.3", "--rounds", "1", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "advice.json").read_text())
    assert written["machine"]["cpus"] >= 1
    for key in ("bare_http_per_s", "http_repeated_profile_per_s", "http_distinct_profiles_per_s"):
        assert written[key] > 0
    assert written["ratio_repeated_to_bare"] == pytest.approx(
        written["http_repeated_profile_per_s"] / written["bare_http_per_s"], rel=0.01
    )
    assert written["goal_ratio"] == 0.8
    assert figures["response_bytes"] > 1000


def test_training_benchmark_runs_a_job_and_the_bare_script(tmp_path: Path):
    figures = training.main(
        ["--steps", "4", "--rounds", "1", "--latency-jobs", "2", "--out", str(tmp_path)]
    )
    written = json.loads((tmp_path / "training.json").read_text())
    assert written["steps"] == 4 and written["latency_jobs"] == 2
    assert written["service_tokens_per_s"] > 0 and written["bare_tokens_per_s"] > 0
    assert written["ratio_service_to_bare"] == pytest.approx(
        written["service_tokens_per_s"] / written["bare_tokens_per_s"], rel=0.01
    )
    assert 0 < written["submit_to_running_p50_s"] <= written["submit_to_running_p95_s"]
    assert figures["goal_ratio"] == 0.95


def test_fleet_benchmark_places_every_job_on_a_class_that_holds_it(tmp_path: Path):
    """Three CPU workers of two budgets and a small batch of mixed jobs: every job succeeds,
    once, on a worker of the class it was placed on (the benchmark exits non-zero otherwise)."""
    from bench import fleet

    figures = fleet.main(["--jobs", "6", "--latency-jobs", "2", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "fleet.json").read_text())
    assert written["jobs"] == 6
    assert (written["failed"], written["ran_twice"], written["over_budget"]) == (0, 0, 0)
    assert written["arrived_at_another_class"] == 0
    # Two small jobs for each large one, and each kind to its class.
    assert sorted(written["jobs_per_class"].values()) == [2, 4]
    assert 0 < figures["placement_latency_p50_s"] <= figures["placement_latency_p95_s"]
    assert written["throughput_jobs_per_min"] > 0
