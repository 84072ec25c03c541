"""Evidence: test the design document's four claims on real training, and publish the figures.

    python -m bench evidence            # the full benchmark: 3 seeds, sweep; writes
                                        # bench/results/evidence.json, BENCHMARKS.md, its plots
                                        # and advisor/data/evidence.json (what the advisor cites)
    python -m bench evidence --quick    # the same, smaller: bench/results/evidence-quick.json
    python -m bench evidence --smoke --out DIR   # a toy base, a few steps: the test's mode

One base model (`bench.evidence.base`: a small Llama pretrained on Python's standard library,
cached) is fine-tuned on one task (`bench.evidence.task`) with LoRA, LoRA+, DoRA, QLoRA,
QLoRA + LoRA+ and QLoRA + DoRA, every run through `worker.training.run_training` with the
held-out set evaluated along the way (`bench.evidence.runs`). Then, in order:

1. grid: every variant at the base learning rate, on every seed (seeds interleaved, so a slow
   spell of a shared machine hits every variant alike);
2. sweep: LoRA and LoRA+ at each learning rate of the sweep on the first seed; each one's best
   (lowest final held-out loss) then runs on the other seeds, and QLoRA and QLoRA + LoRA+ run
   at LoRA's and LoRA+'s best rates on every seed;
3. memory: each variant's run again, a few steps, each in a fresh process (`probe`);
4. figures per claim (`analysis`), verdicts, the advisor's evidence file, plots and
   BENCHMARKS.md (`report`).

Only the full mode publishes (BENCHMARKS.md, its plots, advisor/data/evidence.json); `--quick`
and `--smoke` write their results file only, plus plots and a BENCHMARKS preview under `--out`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.evidence.base import BaseSpec

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("lora", "loraplus", "dora", "qlora", "qlora+loraplus", "qlora+dora")
PUBLISHED_EVIDENCE = ROOT / "advisor" / "data" / "evidence.json"
PUBLISHED_MARKDOWN = ROOT / "BENCHMARKS.md"
RESULTS_DIR = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Mode:
    """How much the benchmark runs. Time grows with len(seeds) x variants x steps, plus the
    sweep and one memory probe per variant."""

    name: str
    base: BaseSpec
    steps: int
    batch_size: int
    eval_every: int
    eval_rows: int
    seeds: tuple[int, ...]
    learning_rate: float
    sweep: tuple[float, ...]
    """Learning rates of the sweep (the base rate among them)."""
    probe_steps: int
    trace_7b: bool = True
    """Also trace Llama-2-7B's LoRA and QLoRA steps with the worker's tracer (about a minute,
    cached)."""
    lora_rank: int = 16
    variants: tuple[str, ...] = field(default=VARIANTS)

    @property
    def train_rows(self) -> int:
        return self.steps * self.batch_size  # one pass: no row is seen twice


FULL_BASE = BaseSpec()
MODES = {
    "full": Mode(
        name="full",
        base=FULL_BASE,
        steps=150,
        batch_size=16,
        eval_every=10,
        eval_rows=256,
        seeds=(0, 1, 2),
        learning_rate=2e-3,
        sweep=(5e-4, 1e-3, 2e-3, 4e-3),
        probe_steps=5,
    ),
    "quick": Mode(
        name="quick",
        base=FULL_BASE,
        steps=40,
        batch_size=16,
        eval_every=10,
        eval_rows=128,
        seeds=(0, 1),
        learning_rate=2e-3,
        sweep=(1e-3, 2e-3),
        probe_steps=2,
    ),
    # The test's mode: a toy base pretrained for seconds, four steps per run. It checks that
    # everything runs end to end and writes its files; its figures mean nothing.
    "smoke": Mode(
        name="smoke",
        base=BaseSpec(
            vocab_size=384,
            # bitsandbytes' CPU NF4 kernels need in_features of at least one 64-weight block.
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            seq_len=64,
            batch_size=8,
            steps=8,
            warmup_steps=1,
            corpus_files=25,
        ),
        steps=4,
        batch_size=8,
        eval_every=2,
        eval_rows=16,
        seeds=(0,),
        learning_rate=2e-3,
        sweep=(2e-3, 4e-3),
        probe_steps=1,
        trace_7b=False,
    ),
}


def _log(message: str, started: float = time.perf_counter()) -> None:
    print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)


def _plan_fields(mode: Mode, key: str, lr: float, seed: int, steps: int) -> dict[str, Any]:
    variant, *ideas = key.split("+")
    return {
        "variant": variant,
        "combine_with": ideas,
        "learning_rate": lr,
        "max_steps": steps,
        "micro_batch_size": mode.batch_size,
        "seq_len": 128,
        "lora_rank": mode.lora_rank,
        "lora_dropout": 0.0,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.03,
        "logging_steps": 1,
        "seed": seed,
    }


def _single_thread() -> None:
    """One torch thread per process. Fine-tuning this model multiplies matrices of a few
    hundred columns, which a second thread barely speeds up; and on a machine shared with
    other jobs, OpenMP threads that wait for each other at every operation while one of them
    is descheduled made steps 5-20x slower (measured). Parallelism comes from running two
    fine-tuning processes at once instead (`--jobs`)."""
    import torch

    torch.set_num_threads(1)


def _run(
    mode: Mode,
    model_dir: Path,
    task: dict[str, Any],
    work: Path,
    key: str,
    lr: float,
    seed: int,
    group: str,
) -> dict[str, Any]:
    """One fine-tuning run (in a pool worker); its record."""
    from bench.evidence.runs import make_plan, train_and_evaluate
    from bench.evidence.task import Evaluator

    out = work / f"{key}-lr{lr:g}-seed{seed}"
    plan = make_plan(model_dir, task, out, **_plan_fields(mode, key, lr, seed, mode.steps))
    figures, _ = train_and_evaluate(
        plan, lambda tok: Evaluator(Path(task["eval_file"]), tok, 128), mode.eval_every
    )
    return {"key": key, "learning_rate": lr, "seed": seed, "group": group, **figures}


def _report_run(record: dict[str, Any]) -> None:
    last = record["evals"][-1]
    _log(
        f"{record['group']:>5} {record['key']:<15} lr {record['learning_rate']:<7g} seed "
        f"{record['seed']}: held-out loss {last['eval_loss']:.3f}, exact match "
        f"{last['exact_match']:.3f}, median step {record['median_step_cpu_seconds']:.3f}s CPU "
        f"({record['median_step_seconds']:.3f}s wall)"
    )


def _run_all(pool, jobs: list[tuple]) -> list[dict[str, Any]]:
    """Run `_run(*job)` for every job on the pool; records in the order of `jobs`."""
    futures = [pool.submit(_run, *job) for job in jobs]
    records = []
    for future in futures:
        records.append(future.result())
        _report_run(records[-1])
    return records


def _probe(mode: Mode, model_dir: Path, task: dict[str, Any], work: Path, key: str) -> dict:
    """The memory of `key`, measured by the worker in a fresh process."""
    from bench.evidence.runs import make_plan

    out = work / f"probe-{key}"
    plan = make_plan(
        model_dir,
        task,
        out,
        **_plan_fields(mode, key, mode.learning_rate, mode.seeds[0], mode.probe_steps),
    )
    path = work / f"probe-{key}.json"
    path.write_text(plan.model_dump_json())
    proc = subprocess.run(
        [sys.executable, "-m", "bench.evidence.probe", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe of {key} failed:\n{proc.stderr[-3000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = figures["peak_memory"].get("rss_growth_bytes")
    _log(
        f"memory {key:<15} weights {figures['model_bytes']['weights'] / 2**20:.2f} MiB, "
        f"peak RSS growth {(growth or 0) / 2**20:.0f} MiB"
    )
    return figures


MODEL_7B = "meta-llama/Llama-2-7b-hf"
TRACED_7B = ("lora", "qlora")


def estimate_7b(trace: bool) -> dict[str, Any]:
    """Llama-2-7B with every variant at seq_len 512 and 2048, from the advisor's analytic
    model; with `trace`, LoRA and QLoRA at 2048 also from the worker's memory tracer (two real
    training steps on the meta device, in a subprocess, cached beside the base models)."""
    from advisor.catalog.models import find_model
    from advisor.memory import GIB, estimate
    from advisor.profile import TrainingSettings
    from advisor.variants import Combination

    arch = find_model(MODEL_7B).architecture
    out: dict[str, Any] = {
        "model": MODEL_7B,
        "method": "advisor.memory.estimate (analytic; within 15% of published measurements, "
        "advisor/data/published-memory.csv)",
    }
    for seq in (512, 2048):
        settings = TrainingSettings(seq_len=seq)
        per: dict[str, Any] = {}
        for key in VARIANTS:
            variant, *ideas = key.split("+")
            e = estimate(arch, settings, Combination(variant, tuple(ideas)))  # type: ignore[arg-type]
            per[key] = {
                "total_gib": round(e.total_gib, 3),
                "total_gb": round(e.total_bytes / 1e9, 3),
                "weights_gib": round(e.breakdown.weights / GIB, 3),
            }
        out[f"seq_len_{seq}"] = {
            "settings": settings.model_dump(),
            "per_variant": per,
            "lora_total_gb": per["lora"]["total_gb"],
            "qlora_total_gb": per["qlora"]["total_gb"],
        }
    if trace:
        out["traced_seq_len_2048"] = _trace_7b(2048)
    return out


def _trace_7b(seq_len: int) -> dict[str, Any]:
    """The worker's tracer's answer for LoRA and QLoRA, or the reason there is none."""
    try:
        from advisor.profile import EstimateRequest
        from bench.evidence.base import cache_root
        from worker.memtrace.runner import TraceRunner, traced_estimate

        runner = TraceRunner(cache_dir=cache_root() / "trace-cache")
        per = {}
        for key in TRACED_7B:
            request = EstimateRequest.model_validate(
                {
                    "model": {"name": MODEL_7B},
                    "training": {"seq_len": seq_len},
                    "variant": key,
                    "method": "trace",
                }
            )
            answer = traced_estimate(request, runner)
            per[key] = {
                "total_gib": round(answer["total_gib"], 3),
                "total_gb": round(answer["total_gib"] * (1 << 30) / 1e9, 3),
            }
        _log(
            f"traced 7B: LoRA {per['lora']['total_gb']:.1f} GB, QLoRA "
            f"{per['qlora']['total_gb']:.1f} GB"
        )
        return {
            "method": "worker.memtrace (two training steps traced on the meta device)",
            "per_variant": per,
            "lora_total_gb": per["lora"]["total_gb"],
            "qlora_total_gb": per["qlora"]["total_gb"],
        }
    except Exception as exc:  # the tracer is optional evidence; the analytic figure stands
        _log(f"traced 7B estimate unavailable: {exc!r}")
        return {"error": repr(exc)}


def run(
    mode: Mode, out_dir: Path | None, publish: bool, keep: Path | None, jobs: int = 2
) -> dict[str, Any]:
    import torch

    _single_thread()
    import bench._common as common
    from bench.evidence import analysis
    from bench.evidence.base import build_base, read_corpus
    from bench.evidence.task import majority_by_kind, write_task
    from worker.artifacts import library_versions

    started = time.perf_counter()
    model_dir, base = build_base(mode.base, log=_log)
    _log(
        f"base {base['key']} ({'cached' if base.get('cached') else 'built'}): "
        f"{base['parameters']:,} parameters, held-out loss {base['held_out_loss']['pretrained']}"
    )
    work_ctx = tempfile.TemporaryDirectory(prefix="loracle-evidence-") if keep is None else None
    work = Path(work_ctx.name) if work_ctx else keep  # type: ignore[assignment]
    try:
        train_texts, _, _ = read_corpus(mode.base.corpus_files)
        task = write_task(
            work / "task", train_texts, train_rows=mode.train_rows, eval_rows=mode.eval_rows
        )
        majority = majority_by_kind(task["eval_file"])  # before the work directory goes
        # Seeds outermost: the variants of one seed run side by side, so a busy spell on a
        # shared machine falls on every variant alike.
        grid = [
            (mode, model_dir, task, work, key, mode.learning_rate, seed, "grid")
            for seed in mode.seeds
            for key in mode.variants
        ]
        sweep = [
            (mode, model_dir, task, work, key, lr, mode.seeds[0], "sweep")
            for key in ("lora", "loraplus")
            for lr in mode.sweep
            if abs(lr - mode.learning_rate) > 1e-12
        ]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_single_thread) as pool:
            runs = _run_all(pool, grid + sweep)
            best_lr: dict[str, float] = {}
            best = []
            for key in ("lora", "loraplus"):
                best_lr[key] = analysis.best_learning_rate(runs, key, mode.seeds[0])  # type: ignore[assignment]
                if abs(best_lr[key] - mode.learning_rate) > 1e-12:
                    best += [
                        (mode, model_dir, task, work, key, best_lr[key], seed, "best")
                        for seed in mode.seeds[1:]
                    ]
            # The combination with LoRA+ at the rates the sweep found, against QLoRA at LoRA's.
            for key, rate in (("qlora", best_lr["lora"]), ("qlora+loraplus", best_lr["loraplus"])):
                if abs(rate - mode.learning_rate) > 1e-12 and key in mode.variants:
                    best += [
                        (mode, model_dir, task, work, key, rate, seed, "best")
                        for seed in mode.seeds
                    ]
            runs += _run_all(pool, best)
        # Each probe is a process of its own; `jobs` of them at a time (their memory is
        # their own, and nothing here is timed).
        with ThreadPoolExecutor(jobs) as threads:
            measured = threads.map(lambda k: _probe(mode, model_dir, task, work, k), mode.variants)
            memory = dict(zip(mode.variants, measured, strict=True))
    finally:
        if work_ctx:
            work_ctx.cleanup()

    e7b = estimate_7b(mode.trace_7b)
    command = (
        "python -m bench evidence"
        + {"full": "", "quick": " --quick", "smoke": " --smoke"}[mode.name]
    )
    measured: dict[str, Any] = {
        "machine": common.machine(),
        "mode": mode.name,
        "setup": {
            "command": command,
            "model": f"a Llama of {base['parameters'] / 1e6:.1f}M parameters pretrained on "
            "Python's standard library",
            "model_short": f"Llama {base['parameters'] / 1e6:.1f}M",
            "task_name": task["name"],
            "task": task["description"] + ".",
            "examples": task["examples"],
            "majority_by_kind": majority,
            "train_rows": task["train_rows"],
            "eval_rows": task["eval_rows"],
            "steps": mode.steps,
            "batch_size": mode.batch_size,
            "eval_every": mode.eval_every,
            "seeds": list(mode.seeds),
            "learning_rate": mode.learning_rate,
            "sweep": list(mode.sweep),
            "lora_rank": mode.lora_rank,
            "variants": list(mode.variants),
            "device": f"CPU ({os.cpu_count()} cores; {jobs} fine-tuning processes of "
            f"{torch.get_num_threads()} torch thread each)",
            "versions": {k: v for k, v in library_versions().items() if v},
            "mode": asdict(mode),
        },
        "base": base,
        "best_learning_rate": best_lr,
        "memory": memory,
        "estimate_7b": e7b,
        "runs": runs,
        "runtime_seconds": round(time.perf_counter() - started, 1),
        # This process and its finished children (the pool's workers, the probes, the tracer).
        "cpu_seconds": round(
            sum(
                usage.ru_utime + usage.ru_stime
                for usage in (
                    resource.getrusage(resource.RUSAGE_SELF),
                    resource.getrusage(resource.RUSAGE_CHILDREN),
                )
            ),
            1,
        ),
    }
    results = summarize(measured)
    _write(results, out_dir, publish)
    return results


def summarize(measured: dict[str, Any]) -> dict[str, Any]:
    """The measurements plus everything derived from them (claims, verdicts, tables, the
    advisor's evidence): what the results file holds. Pure, so `--render` can redo it."""
    from bench.evidence import analysis, report

    setup, runs = measured["setup"], measured["runs"]
    base_lr, first_seed = setup["learning_rate"], setup["seeds"][0]
    claims = analysis.claims(
        runs,
        base_lr=base_lr,
        best_lr=measured["best_learning_rate"],
        memory=measured["memory"],
        estimate_7b=measured["estimate_7b"],
    )
    verdicts = report.verdicts(claims)
    per_variant = {}
    for key in setup["variants"]:
        chosen = analysis.select(runs, key, base_lr)
        per_variant[key] = {
            **{m: analysis.spread(analysis.final(r)[m] for r in chosen) for m in analysis.METRICS},
            "median_step_seconds": analysis.spread(r["median_step_seconds"] for r in chosen),
            "median_step_cpu_seconds": analysis.spread(
                r["median_step_cpu_seconds"] for r in chosen
            ),
            "trainable_parameters": chosen[0]["trainable_parameters"],
        }
    sweep_table = {
        key: {
            f"{r['learning_rate']:g}": analysis.final(r)
            for r in runs
            if r["key"] == key and r["seed"] == first_seed
        }
        for key in ("lora", "loraplus")
    }
    derived = {
        "claims": claims,
        "verdicts": verdicts,
        "per_variant": per_variant,
        "sweep_table": sweep_table,
        "discussion": report.discussion(claims, verdicts, measured["base"], measured["memory"]),
    }
    results = {**measured, **derived}
    results["advisor_evidence"] = report.advisor_evidence(results)
    return results


def _write(
    results: dict[str, Any], out_dir: Path | None, publish: bool, rendered: bool = False
) -> None:
    from bench._common import write_results
    from bench.evidence import report

    mode = results["mode"]
    name = "evidence" if mode == "full" else f"evidence-{mode}"
    figures = {k: v for k, v in results.items() if k != "machine"}
    if out_dir is None and not rendered:
        path = write_results(name, figures)
        plot_dir = RESULTS_DIR / name
    elif out_dir is None:  # keep the machine and date of the run, not of the rendering
        path = RESULTS_DIR / f"{name}.json"
        report.write_json(path, results)
        plot_dir = RESULTS_DIR / name
    else:
        path = out_dir / f"{name}.json"
        report.write_json(path, results)
        plot_dir = out_dir / name
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots = {"eval_loss": plot_dir / "eval-loss.png", "memory": plot_dir / "memory.png"}
    report.plot_eval_loss(results, plots["eval_loss"])
    report.plot_memory(results, plots["memory"])
    _log(f"results: {path}; plots: {plot_dir}")
    if publish:
        markdown_path, evidence_path = PUBLISHED_MARKDOWN, PUBLISHED_EVIDENCE
    else:
        where = out_dir or plot_dir
        markdown_path, evidence_path = where / "BENCHMARKS.md", where / "advisor-evidence.json"
    links = {k: os.path.relpath(p, markdown_path.parent) for k, p in plots.items()}
    markdown_path.write_text(report.markdown(results, links), encoding="utf-8")
    report.write_json(evidence_path, results["advisor_evidence"])
    _log(f"{'published' if publish else 'preview'}: {markdown_path}, {evidence_path}")


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bench evidence",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_const",
        const="quick",
        dest="mode",
        help="fewer steps and a smaller sweep (about 5 minutes once the base is "
        "cached); never publishes",
    )
    size.add_argument(
        "--smoke",
        action="store_const",
        const="smoke",
        dest="mode",
        help="a toy base and a few steps per run: checks the pipeline end to end",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="write every output here instead of bench/results (and never publish)",
    )
    parser.add_argument(
        "--no-publish",
        action="store_true",
        help="full mode: do not rewrite BENCHMARKS.md and advisor/data/evidence.json",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="fine-tuning runs at once, one torch thread each (default: 2, or 1 on one core)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS",
        help="train nothing: recompute the figures, plots and reports from a results file "
        "(a full run's republishes)",
    )
    parser.add_argument("--keep", type=Path, help="keep the runs' adapters and data here")
    args = parser.parse_args(argv)
    if args.render:
        stored = json.loads(args.render.read_text(encoding="utf-8"))
        if "majority_by_kind" not in stored["setup"]:  # results written before it was kept
            stored["setup"]["majority_by_kind"] = _majority_again(stored)
        results = summarize(stored)
        publish = results["mode"] == "full" and args.out is None and not args.no_publish
        _write(results, args.out, publish, rendered=True)
        return results
    mode = MODES[args.mode or "full"]
    publish = mode.name == "full" and args.out is None and not args.no_publish
    results = run(mode, args.out, publish, args.keep, max(1, args.jobs))
    _log(f"done in {results['runtime_seconds'] / 60:.1f} minutes")
    for claim, verdict in results["verdicts"].items():
        print(f"{claim:>10}: {verdict['verdict']}")
    return results
