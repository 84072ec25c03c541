"""The evidence benchmark runs end to end and writes its files in the shape the advisor and
BENCHMARKS.md read. Its numbers are not checked here: they are the benchmark's to report.

The run is `--smoke`: a toy base (pretrained for a few steps, in a temporary cache) and four
optimizer steps per fine-tuning run, through the same code as the full benchmark: base build,
task files, every variant through `run_training` with periodic evaluation, the learning-rate
sweep, one memory probe per variant in a fresh process, analysis, plots, report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advisor import evidence
from bench.evidence import VARIANTS

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = (ROOT / "BENCHMARKS.md", ROOT / "advisor" / "data" / "evidence.json")
PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow


def _snapshot() -> list[bytes | None]:
    return [p.read_bytes() if p.exists() else None for p in PUBLISHED]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("evidence")
    cache = tmp_path_factory.mktemp("cache")
    before = _snapshot()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "evidence", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "LORACLE_BENCH_CACHE": str(cache)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"out": out, "cache": cache, "stdout": proc.stdout, "before": before}


def test_writes_results_plots_and_previews(smoke):
    out = smoke["out"]
    assert (out / "evidence-smoke.json").is_file()
    for name in ("eval-loss.png", "memory.png"):
        assert (out / "evidence-smoke" / name).read_bytes()[:8] == PNG
    markdown = (out / "BENCHMARKS.md").read_text()
    assert "| claim (design document) | loracle measured | verdict |" in markdown
    assert "python -m bench evidence --smoke" in markdown
    assert "![held-out loss against step](evidence-smoke/eval-loss.png)" in markdown


def test_smoke_never_publishes(smoke):
    assert _snapshot() == smoke["before"]


def test_results_file_shape(smoke):
    results = json.loads((smoke["out"] / "evidence-smoke.json").read_text())
    assert {"machine", "mode", "setup", "base", "claims", "verdicts", "memory", "runs"} <= set(
        results
    )
    assert results["mode"] == "smoke"
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
    assert set(results["memory"]) == set(VARIANTS)
    for figures in results["memory"].values():
        assert figures["peak_memory"]["device"] == "cpu"
        assert figures["model_bytes"]["weights"] > 0
        assert figures["base_lm_loss"] > 0
    assert (
        results["memory"]["qlora"]["model_bytes"]["adapted_linears"]
        < results["memory"]["lora"]["model_bytes"]["adapted_linears"]
    )


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


def test_smoke_writes_every_field_the_published_full_run_wrote(smoke):
    # The smoke mode is the quick and full modes' pipeline with a toy base and fewer steps:
    # its results file must hold everything the published run's does (keys, three levels
    # deep; the seed-indexed tables below that vary with the mode's seeds and sweep).
    published = json.loads((ROOT / "bench" / "results" / "evidence.json").read_text())
    results = json.loads((smoke["out"] / "evidence-smoke.json").read_text())
    published_shape = _shape(published, 3)
    for table in ("runs", "sweep_table", "best_learning_rate", "per_variant"):
        published_shape[table] = None  # keyed by the mode's seeds and learning rates
    # The smoke mode skips the minute-long 7B trace (Mode.trace_7b); the analytic one stays.
    published_shape["estimate_7b"].pop("traced_seq_len_2048")
    assert _missing(published_shape, _shape(results, 3)) == []


def test_every_run_is_evaluated_from_step_zero_to_the_end(smoke):
    results = json.loads((smoke["out"] / "evidence-smoke.json").read_text())
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


def test_the_advisor_reads_the_evidence_it_writes(smoke):
    data = evidence.load(str(smoke["out"] / "advisor-evidence.json"))
    assert data is not None and data["schema"] == evidence.SCHEMA
    notes = evidence.measured_notes("qlora", ("dora",), data)
    assert any(note.startswith("loracle measured") and "DoRA" in note for note in notes)
    assert "QLoRA + DoRA" in " ".join(notes)
    assert evidence.measured_evidence("dora", data).startswith("; loracle measured: DoRA")


def test_base_model_is_rebuilt_identically(smoke, tmp_path, monkeypatch):
    from bench.evidence import MODES
    from bench.evidence.base import build_base

    results = json.loads((smoke["out"] / "evidence-smoke.json").read_text())
    monkeypatch.setenv("LORACLE_BENCH_CACHE", str(tmp_path))
    path, record = build_base(MODES["smoke"].base, log=lambda _: None)
    assert record["cached"] is False and path.parent == tmp_path
    assert record["weights_sha256"] == results["base"]["weights_sha256"]
    again, cached = build_base(MODES["smoke"].base, log=lambda _: None)
    assert cached["cached"] is True and again == path
