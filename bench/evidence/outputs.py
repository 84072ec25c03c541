"""The files the benchmark writes: its results file and plots, and BENCHMARKS.md with the
advisor's evidence file (published by the full mode, else a preview beside the results); and
a stored results file read back for `--render`."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.evidence.benchmarks_md import markdown
from bench.evidence.log import log
from bench.evidence.plots import plot_eval_loss, plot_memory

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED_EVIDENCE = ROOT / "advisor" / "data" / "evidence.json"
PUBLISHED_MARKDOWN = ROOT / "BENCHMARKS.md"
RESULTS_DIR = ROOT / "bench" / "results"


def write(
    results: dict[str, Any],
    out_dir: Path | None,
    publish: bool,
    rendered: bool = False,
    started: float | None = None,
) -> None:
    """Write the files of `results` (under `out_dir`, or bench/results). `rendered`: the
    results were summarized again from a stored file, so their timings are kept as stored.
    `started`: the perf_counter reading when the command began."""
    mode = results["mode"]
    path = _results_path(mode, out_dir)
    plot_dir = path.with_suffix("")
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots = {"eval_loss": plot_dir / "eval-loss.png", "memory": plot_dir / "memory.png"}
    plot_eval_loss(results, plots["eval_loss"])
    plot_memory(results, plots["memory"])
    if not rendered and started is not None:
        results["timing"]["total_seconds"] = round(time.perf_counter() - started, 1)
    if mode == "quick" and not rendered:
        # The latest quick run that built its base and the latest that found it cached, each
        # as measured: what BENCHMARKS.md quotes for --quick.
        timings = _quick_timings(path)
        timing = results["timing"]
        timings["warm" if timing["base_cached"] else "cold"] = {
            **{k: timing[k] for k in ("total_seconds", "base_seconds", "base_cached")},
            "cpu_seconds": timing.get("cpu_seconds"),
            "load_average_at_start": timing.get("load_average_at_start"),
            "date": results["machine"]["date"],
            "cpus": results["machine"]["cpus"],
            "base_key": results["base"]["key"],
        }
        results["quick_timings"] = timings
    elif mode == "full":
        # A copy of the quick runs' own records, so that the published file holds every
        # figure BENCHMARKS.md quotes.
        results["quick_timings"] = _quick_timings(_results_path("quick", out_dir)) or results.get(
            "quick_timings", {}
        )
    write_json(path, results)
    log(f"results: {path}; plots: {plot_dir}")
    if publish:
        markdown_path, evidence_path = PUBLISHED_MARKDOWN, PUBLISHED_EVIDENCE
    else:
        markdown_path, evidence_path = (
            plot_dir / "BENCHMARKS.md",
            plot_dir / "advisor-evidence.json",
        )
    links = {k: os.path.relpath(p, markdown_path.parent) for k, p in plots.items()}
    markdown_path.write_text(markdown(results, links), encoding="utf-8")
    write_json(evidence_path, results["advisor_evidence"])
    log(f"{'published' if publish else 'preview'}: {markdown_path}, {evidence_path}")


def _results_path(mode: str, out_dir: Path | None) -> Path:
    name = "evidence" if mode == "full" else f"evidence-{mode}"
    return (out_dir or RESULTS_DIR) / f"{name}.json"


def _quick_timings(path: Path) -> dict[str, Any]:
    """The quick runs' timings kept in the quick results file at `path` ({} when none)."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stored.get("quick_timings") or {} if stored.get("mode") == "quick" else {}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_stored(path: Path) -> dict[str, Any]:
    """A results file's measurements, with what files written by older versions lack
    filled in, ready to be summarized again."""
    stored = json.loads(path.read_text(encoding="utf-8"))
    if "majority_by_kind" not in stored["setup"]:  # results written before it was kept
        stored["setup"]["majority_by_kind"] = _majority_again(stored)
    if "timing" not in stored:  # results written before the run's timing was kept
        stored["timing"] = {
            "total_seconds": stored.pop("runtime_seconds", None),
            "cpu_seconds": stored.pop("cpu_seconds", None),
            "base_cached": bool(stored["base"].get("cached")),
            "base_seconds": None,
        }
    return stored


def _majority_again(stored: dict[str, Any]) -> dict[str, float]:
    """Rebuild the held-out file of a stored run (deterministic) and count its answers."""
    from bench.evidence.base import read_corpus
    from bench.evidence.task import majority_by_kind, write_task

    setup = stored["setup"]
    texts, _, _ = read_corpus(setup["mode"]["base"]["corpus_files"])
    with tempfile.TemporaryDirectory() as scratch:
        task = write_task(
            Path(scratch), texts, train_rows=setup["train_rows"], eval_rows=setup["eval_rows"]
        )
        return majority_by_kind(task["eval_file"])
