"""The evidence benchmark's quick mode runs end to end and writes its files in the shape the
advisor and BENCHMARKS.md read. Its numbers are not checked here: they are the benchmark's to
report.

The run is the real `python -m bench evidence --quick`, with the benchmark's cache pointed at
an empty directory, so it also builds its base model: base build, task files, every variant
through `run_training` with periodic evaluation, the learning-rate sweep and its finalists on
every seed, one memory probe per variant in a fresh process, analysis, plots, report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from advisor import evidence
from bench.evidence.modes import MODES
from bench.evidence.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = (ROOT / "BENCHMARKS.md", ROOT / "advisor" / "data" / "evidence.json")
PNG = b"\x89PNG\r\n\x1a\n"
# Below pytest's own limit (pyproject.toml: timeout = 600), so that a slow run fails here,
# with the benchmark's output, rather than being killed without it.
RUN_TIMEOUT_S = 480

pytestmark = pytest.mark.slow


def _snapshot() -> list[bytes | None]:
    return [p.read_bytes() if p.exists() else None for p in PUBLISHED]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("evidence")
    cache = tmp_path_factory.mktemp("cache")
    before = _snapshot()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "evidence", "--quick", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "LORACLE_BENCH_CACHE": str(cache)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "evidence-quick.json").read_text())
    return {"out": out, "cache": cache, "stdout": proc.stdout, "before": before, "results": results}


def test_writes_results_plots_and_previews(quick):
    out = quick["out"]
    for name in ("eval-loss.png", "memory.png"):
        assert (out / "evidence-quick" / name).read_bytes()[:8] == PNG
    markdown = (out / "evidence-quick" / "BENCHMARKS.md").read_text()
    assert "| claim (design document) | loracle measured | verdict |" in markdown
    assert "python -m bench evidence --quick" in markdown
    assert "![held-out loss against step](eval-loss.png)" in markdown


def test_quick_never_publishes(quick):
    assert _snapshot() == quick["before"]


def test_quick_runs_the_quick_mode_and_builds_its_base(quick):
    results = quick["results"]
    assert results["mode"] == "quick"
    assert results["setup"]["mode"]["base"] == asdict(MODES["quick"].base)
    assert results["base"]["cached"] is False  # the cache was empty: the base was built
    assert (quick["cache"] / results["base"]["key"] / "bench-base.json").is_file()


def test_records_its_own_wall_time(quick):
    results = quick["results"]
    timing = results["timing"]
    assert timing["base_cached"] is False
    assert 0 < timing["base_seconds"] < timing["total_seconds"]
    assert timing["finetune_seconds"] > 0 and timing["probe_seconds"] > 0
    # The quick ledger records this cold run, and the preview quotes it from there.
    cold = results["quick_timings"]["cold"]
    assert cold["total_seconds"] == timing["total_seconds"]
    assert "warm" not in results["quick_timings"]
    markdown = (quick["out"] / "evidence-quick" / "BENCHMARKS.md").read_text()
    assert f"This run took {timing['total_seconds'] / 60:.1f} minutes of wall time" in markdown
    assert f"it took {cold['total_seconds'] / 60:.1f} minutes building its base" in markdown


def test_results_file_shape(quick):
    results = quick["results"]
    assert {"machine", "mode", "setup", "base", "claims", "verdicts", "memory", "runs"} <= set(
        results
    )
    assert results["base"]["key"] and results["base"]["weights_sha256"]
    claims = results["claims"]
    assert set(claims) == {"loraplus", "dora", "qlora", "qlora+loraplus", "qlora+dora", "lora"}
    for comparison in ("same_lr", "best_lr"):
        block = claims["loraplus"][comparison]
        assert {"target_eval_loss", "speedup", "per_seed"} <= set(block)
        assert set(block["speedup"]) == {"mean", "std", "min", "max", "n"}
    assert {"quality", "overhead"} <= set(claims["dora"])
    assert claims["dora"]["overhead"]["extra_parameters"] > 0  # DoRA's magnitude vectors
    seven_b = claims["qlora"]["memory_7b"]["seq_len_2048"]
    assert seven_b["qlora_total_gb"] < seven_b["lora_total_gb"]
    assert set(results["verdicts"]) == {"loraplus", "dora", "qlora", "lora"}
    assert all(
        v["verdict"] in ("reproduces", "partly", "does not reproduce")
        for v in results["verdicts"].values()
    )
    assert set(results["verdicts"]["dora"]["checks"]) == {"quality", "parameters"}
    assert set(results["verdicts"]["qlora"]["checks"]) == {
        "memory_7b",
        "memory_small",
        "quality",
    }
    assert set(results["memory"]) == set(VARIANTS)
    for figures in results["memory"].values():
        assert figures["peak_memory"]["device"] == "cpu"
        assert figures["model_bytes"]["weights"] > 0
        assert figures["base_lm_loss"] > 0
    assert (
        results["memory"]["qlora"]["model_bytes"]["adapted_linears"]
        < results["memory"]["lora"]["model_bytes"]["adapted_linears"]
    )
    small = claims["qlora"]["measured_small"]
    assert small["peak_ratio"] > 0 and 0 < small["adapted_linears_ratio_16bit"] < 1


def _shape(value, depth: int):
    """The nested keys of a results file, to `depth` levels."""
    if depth == 0 or not isinstance(value, dict):
        return None
    return {key: _shape(item, depth - 1) for key, item in value.items()}


def _missing(expected, actual, where="results") -> list[str]:
    if expected is None:
        return []
    if actual is None:
        return [where]
    gaps = []
    for key, sub in expected.items():
        if key not in actual:
            gaps.append(f"{where}.{key}")
        else:
            gaps += _missing(sub, actual[key], f"{where}.{key}")
    return gaps


def test_quick_writes_every_field_the_published_full_run_wrote(quick):
    # The quick mode is the full mode's pipeline, smaller: its results file must hold
    # everything the published run's does (keys, three levels deep; the seed- and
    # rate-indexed tables below that vary with the mode's seeds and sweep).
    published = json.loads((ROOT / "bench" / "results" / "evidence.json").read_text())
    published_shape = _shape(published, 3)
    for table in ("runs", "sweep_table", "best_learning_rate", "per_variant", "quick_timings"):
        published_shape[table] = None  # keyed by the mode's seeds, rates and recorded runs
    # The quick mode skips the minute-long 7B trace (Mode.trace_7b); the analytic one stays.
    published_shape["estimate_7b"].pop("traced_seq_len_2048", None)
    assert _missing(published_shape, _shape(quick["results"], 3)) == []


def test_every_run_is_evaluated_from_step_zero_to_the_end(quick):
    results = quick["results"]
    runs = results["runs"]
    steps = results["setup"]["steps"]
    grid = {(r["key"], r["seed"]) for r in runs if r["group"] == "grid"}
    assert grid == {(k, s) for k in VARIANTS for s in results["setup"]["seeds"]}
    assert {r["learning_rate"] for r in runs if r["key"] == "lora"} == set(
        results["setup"]["sweep"]
    )
    for run in runs:
        evals = run["evals"]
        assert evals[0]["step"] == 0 and evals[-1]["step"] == steps == run["steps"]
        for point in evals:
            assert {"eval_loss", "token_accuracy", "exact_match", "exact_match_by_kind"} <= set(
                point
            )
            assert 0 <= point["exact_match"] <= 1
        assert run["median_step_seconds"] > 0
        # The worker's own end-of-run evaluation, on the same held-out file, agrees.
        assert run["worker_eval_loss"] == pytest.approx(evals[-1]["eval_loss"], rel=0.05)


def test_best_rates_are_picked_on_every_seed(quick):
    results = quick["results"]
    seeds = results["setup"]["seeds"]
    for key in ("lora", "loraplus"):
        pick = results["learning_rate_pick"][key]
        assert pick["picked_on"] == f"mean of {len(seeds)} seeds"
        assert pick["learning_rate"] == results["best_learning_rate"][key]
        # Every rate the pick chose among ran on every seed.
        for rate in pick["mean_eval_loss"]:
            ran = {
                r["seed"]
                for r in results["runs"]
                if r["key"] == key and f"{r['learning_rate']:g}" == rate
            }
            assert ran == set(seeds)
        assert len(pick["mean_eval_loss"]) == 1 + results["setup"]["finalists"]
        if pick["edge"]:
            assert f"{key}'s best learning rate" in quick["stdout"]


def test_the_advisor_reads_the_evidence_it_writes(quick):
    data = evidence.load(str(quick["out"] / "evidence-quick" / "advisor-evidence.json"))
    assert data is not None and data["schema"] == evidence.SCHEMA
    notes = evidence.measured_notes("qlora", ("dora",), data)
    assert any(n.source.startswith("loracle measured") and "DoRA" in n.text for n in notes)
    assert "QLoRA + DoRA" in " ".join(n.text for n in notes)
    assert evidence.measured_evidence("dora", data).startswith("; loracle measured: DoRA")
    qlora = evidence.measured_evidence("qlora", data)
    assert "in 16 bits" in qlora and "peak memory was" in qlora
