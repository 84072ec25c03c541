"""BENCHMARKS.md renders from constructed results, and its sentences about run time come from
the records."""

from __future__ import annotations

from bench.evidence.benchmarks_md import markdown
from tests.bench.builders import results


def test_constructed_results_render_to_markdown():
    text = markdown(results(), {"eval_loss": "e.png", "memory": "m.png"})
    assert "## What reproduces, what does not, and why that may be" in text


def test_run_time_sentences_come_from_the_records():
    res = results(
        timing={"total_seconds": 1500.0, "base_seconds": 250.0, "base_cached": False},
    )
    res["quick_timings"] = {
        "cold": {"total_seconds": 180.0, "base_seconds": 50.0, "date": "2026-01-01", "cpus": 2},
        "warm": {"total_seconds": 126.0, "base_seconds": 0.1, "date": "2026-01-01", "cpus": 2},
    }
    text = markdown(res, {"eval_loss": "e", "memory": "m"})
    assert "This run took 25.0 minutes of wall time, building the base model in the run " in text
    assert "(4.2 minutes of it), within its budget of 30 minutes on 2 cores" in text
    assert "it took 3.0 minutes building its base in the run" in text
    assert "and 2.1 minutes with its base cached" in text
    over = results(timing={"total_seconds": 1900.0, "base_seconds": 250.0, "base_cached": False})
    assert "over its budget of 30 minutes" in markdown(over, {"eval_loss": "e", "memory": "m"})
    # A cached base's recorded build time counts against the budget.
    cached = results(timing={"total_seconds": 1700.0, "base_seconds": 1.0, "base_cached": True})
    text = markdown(cached, {"eval_loss": "e", "memory": "m"})
    assert "it comes to 32.3 minutes, over its budget" in text
    assert "no quick run has recorded its time yet" in text
