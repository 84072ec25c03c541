"""Evidence: test the design document's four claims on real training, and publish the figures.

    python -m bench evidence            # the full benchmark: 3 seeds, sweep; writes
                                        # bench/results/evidence.json, BENCHMARKS.md, its plots
                                        # and advisor/data/evidence.json (what the advisor cites)
    python -m bench evidence --quick    # the same pipeline, smaller (a smaller base, fewer
                                        # steps, seeds and rates): bench/results/evidence-quick.json
    python -m bench evidence --quick --out DIR   # everything under DIR (the test's run)

One base model (`bench.evidence.base`: a small Llama pretrained on Python's standard library,
cached) is fine-tuned on one task (`bench.evidence.task`) with LoRA, LoRA+, DoRA, QLoRA,
QLoRA + LoRA+ and QLoRA + DoRA, every run through `worker.training.run_training` with the
held-out set evaluated along the way (`bench.evidence.runs`). Then, in order:

1. grid: every variant at the base learning rate, on every seed (seeds interleaved, so a slow
   spell of a shared machine hits every variant alike);
2. sweep: LoRA and LoRA+ at each learning rate of the sweep on the first seed; the
   `finalists` best of them (lowest final held-out loss) also on the other seeds, and each
   one's best rate is the lowest mean over seeds among the rates run on every seed (the base
   rate always is); a pick at the edge of the sweep is flagged. QLoRA and QLoRA + LoRA+ then
   run at LoRA's and LoRA+'s picks on every seed;
3. memory: each variant's run again, a few steps, each in a fresh process (`probe`);
4. figures per claim (`analysis`), verdicts, the advisor's evidence file, plots and
   BENCHMARKS.md (`report`).

The results file records the run's own wall time (`timing`: in all, building or loading the
base, fine-tuning, probes) and whether the base came from the cache; every sentence about
how long the benchmark takes is rendered from those records. A `--quick` run also keeps, in
its results file, the latest timing of a quick run that built its base (cold) and of one
that found it cached (warm); BENCHMARKS.md quotes them.

Only the full mode publishes (BENCHMARKS.md, its plots, advisor/data/evidence.json); `--quick`
writes its results file only, plus plots and a BENCHMARKS preview beside it (or under
`--out`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
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
    finalists: int = 2
    """Rates of the sweep, besides the base rate, that run on every seed (the best of the
    first seed): each method's best rate is picked on the mean over seeds among them."""
    trace_7b: bool = True
    """Also trace Llama-2-7B's LoRA and QLoRA steps with the worker's tracer (about a minute,
    cached)."""
    lora_rank: int = 16
    variants: tuple[str, ...] = field(default=VARIANTS)

    @property
    def train_rows(self) -> int:
        return self.steps * self.batch_size  # one pass: no row is seen twice


FULL_BASE = BaseSpec()
# A quarter of the full base's compute per token and 300 steps: built in well under a minute,
# so that a quick run, base build included, fits the test suite's budget.
QUICK_BASE = BaseSpec(
    vocab_size=1024,
    hidden_size=128,  # bitsandbytes' CPU NF4 kernels need in_features of at least 64
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    steps=300,
    warmup_steps=20,
)
MODES = {
    "full": Mode(
        name="full",
        base=FULL_BASE,
        steps=150,
        batch_size=16,
        # Evaluating 256 rows took 40% of a run's time at every 10 steps (measured); every
        # 15 keeps 11 points per curve for the interpolated steps-to-target and leaves
        # room in the 30 minutes for the wider sweep.
        eval_every=15,
        eval_rows=256,
        seeds=(0, 1, 2),
        learning_rate=2e-3,
        sweep=(2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3),
        probe_steps=5,
    ),
    # The same pipeline, small enough to run end to end in the test suite (a smaller base,
    # 40 steps, 2 seeds, 3 rates, no 7B trace). Its figures are a preview, not evidence.
    "quick": Mode(
        name="quick",
        base=QUICK_BASE,
        steps=40,
        batch_size=16,
        eval_every=10,
        eval_rows=128,
        seeds=(0, 1),
        learning_rate=2e-3,
        sweep=(1e-3, 2e-3, 4e-3),
        finalists=1,
        probe_steps=2,
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

    cpu = time.process_time()
    out = work / f"{key}-lr{lr:g}-seed{seed}"
    plan = make_plan(model_dir, task, out, **_plan_fields(mode, key, lr, seed, mode.steps))
    figures, _ = train_and_evaluate(
        plan, lambda tok: Evaluator(Path(task["eval_file"]), tok, 128), mode.eval_every
    )
    return {
        "key": key,
        "learning_rate": lr,
        "seed": seed,
        "group": group,
        **figures,
        # The whole run's, for the benchmark's CPU total (see `cpu_seconds` in `run`).
        "process_cpu_seconds": round(time.process_time() - cpu, 2),
    }


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


# What every fine-tuning run imports, imported once by the forkserver that forks the runs'
# processes: a spawned process spends about 4 s of CPU importing them (measured).
PRELOAD = [
    "torch",
    "transformers",
    "transformers.trainer",
    "peft",
    "bitsandbytes",
    "worker.training",
    "worker.modeling",
    "bench.evidence.runs",
    "bench.evidence.task",
]


def _context() -> Any:
    """Processes for the fine-tuning runs, forked from a server that has imported the
    libraries and run nothing: each starts in the same state without paying for the imports.
    (Not for the memory probes: see `_probe_all`.)"""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _probe_plan(mode: Mode, model_dir: Path, task: dict[str, Any], work: Path, key: str) -> Path:
    from bench.evidence.runs import make_plan

    plan = make_plan(
        model_dir,
        task,
        work / f"probe-{key}",
        **_plan_fields(mode, key, mode.learning_rate, mode.seeds[0], mode.probe_steps),
    )
    path = work / f"probe-{key}.json"
    path.write_text(plan.model_dump_json())
    return path


def _probe_all(
    mode: Mode, model_dir: Path, task: dict[str, Any], work: Path, jobs: int
) -> dict[str, Any]:
    """The memory of every variant, measured by the worker, each in a fresh interpreter
    (`bench.evidence.probe` says why); `jobs` at a time (their memory is their own, and
    nothing here is timed).

    Spawned, not forked from `_context()`'s server: a forked process shares the server's
    shared-library pages without counting them as resident until it touches them, so the
    libraries' code that training first runs would count as growth of the run's memory
    (measured: twice the growth of a spawned process, +60 MiB for every variant)."""
    from bench.evidence.probe import probe

    held = work / "held-out-texts.json"
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        jobs, mp_context=spawn, initializer=_single_thread, max_tasks_per_child=1
    ) as pool:
        futures = {
            key: pool.submit(probe, _probe_plan(mode, model_dir, task, work, key), held)
            for key in mode.variants
        }
        memory = {}
        for key, future in futures.items():
            figures = memory[key] = future.result()
            growth = figures["peak_memory"].get("rss_growth_bytes")
            _log(
                f"memory {key:<15} weights {figures['model_bytes']['weights'] / 2**20:.2f} MiB, "
                f"peak RSS growth {(growth or 0) / 2**20:.0f} MiB"
            )
    return memory


SWEPT = ("lora", "loraplus")
"""The methods whose learning rate the sweep tunes."""
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
    mode: Mode,
    out_dir: Path | None,
    publish: bool,
    keep: Path | None,
    jobs: int = 2,
    started: float | None = None,
) -> dict[str, Any]:
    """Run `mode` and write its files. `started`: the perf_counter reading when the command
    began (its wall time is the run's), now when not given."""
    started = time.perf_counter() if started is None else started
    load_at_start = os.getloadavg()
    import torch

    _single_thread()
    import bench._common as common
    from bench.evidence import analysis
    from bench.evidence.base import build_base, read_corpus
    from bench.evidence.task import majority_by_kind, write_task
    from worker.artifacts import library_versions

    clock = time.perf_counter()
    model_dir, base = build_base(mode.base, log=_log)
    base_seconds = time.perf_counter() - clock
    _log(
        f"base {base['key']} ({'cached' if base.get('cached') else 'built'}): "
        f"{base['parameters']:,} parameters, held-out loss {base['held_out_loss']['pretrained']}"
    )
    work_ctx = tempfile.TemporaryDirectory(prefix="loracle-evidence-") if keep is None else None
    work = Path(work_ctx.name) if work_ctx else keep  # type: ignore[assignment]
    try:
        clock = time.perf_counter()
        train_texts, held_texts, _ = read_corpus(mode.base.corpus_files)
        (work / "held-out-texts.json").write_text(json.dumps(held_texts), encoding="utf-8")
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
            for key in SWEPT
            for lr in mode.sweep
            if abs(lr - mode.learning_rate) > 1e-12
        ]
        with ProcessPoolExecutor(jobs, mp_context=_context(), initializer=_single_thread) as pool:
            runs = _run_all(pool, grid + sweep)
            # The first seed's best rates again on the other seeds, so that the pick rests on
            # every seed rather than on one seed's luck.
            finals = [
                (mode, model_dir, task, work, key, lr, seed, "sweep")
                for key in SWEPT
                for lr in analysis.finalists(
                    runs, key, mode.seeds[0], mode.finalists, exclude=mode.learning_rate
                )
                for seed in mode.seeds[1:]
            ]
            runs += _run_all(pool, finals)
            picks = {
                key: analysis.pick_learning_rate(runs, key, list(mode.seeds), list(mode.sweep))
                for key in SWEPT
            }
            best_lr: dict[str, float] = {key: pick["learning_rate"] for key, pick in picks.items()}
            for key, pick in picks.items():
                _log(
                    f"best learning rate of {key}: {pick['learning_rate']:g} "
                    f"(lowest final held-out loss, {pick['picked_on']})"
                )
                if pick["edge"]:
                    _log(
                        f"WARNING: {key}'s best learning rate {pick['learning_rate']:g} is the "
                        f"{pick['edge']} of the sweep; one beyond it may be better still"
                    )
            # The combination with LoRA+ at the rates the sweep found, against QLoRA at LoRA's.
            best = []
            for key, rate in (("qlora", best_lr["lora"]), ("qlora+loraplus", best_lr["loraplus"])):
                if abs(rate - mode.learning_rate) > 1e-12 and key in mode.variants:
                    best += [
                        (mode, model_dir, task, work, key, rate, seed, "best")
                        for seed in mode.seeds
                    ]
            runs += _run_all(pool, best)
        finetune_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        memory = _probe_all(mode, model_dir, task, work, jobs)
        probe_seconds = time.perf_counter() - clock
    finally:
        if work_ctx:
            work_ctx.cleanup()

    clock = time.perf_counter()
    e7b = estimate_7b(mode.trace_7b)
    estimate_seconds = time.perf_counter() - clock
    command = "python -m bench evidence" + {"full": "", "quick": " --quick"}[mode.name]
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
            "finalists": mode.finalists,
            "lora_rank": mode.lora_rank,
            "variants": list(mode.variants),
            "device": f"CPU ({os.cpu_count()} cores; {jobs} fine-tuning processes of "
            f"{torch.get_num_threads()} torch thread each)",
            "versions": {k: v for k, v in library_versions().items() if v},
            "mode": asdict(mode),
        },
        "base": base,
        "best_learning_rate": best_lr,
        "learning_rate_pick": picks,
        "memory": memory,
        "estimate_7b": e7b,
        "runs": runs,
        "timing": {
            # Wall clock from the start of the command; `total_seconds` is set again once
            # the plots are drawn, just before the files are written.
            "total_seconds": round(time.perf_counter() - started, 1),
            "base_seconds": round(base_seconds, 1),
            "base_cached": bool(base.get("cached")),
            "finetune_seconds": round(finetune_seconds, 1),
            "probe_seconds": round(probe_seconds, 1),
            "estimate_7b_seconds": round(estimate_seconds, 1),
            "runs": len(runs),
            "jobs": jobs,
            # Another job on a shared machine slows every figure above; this says how busy
            # it was when the run began (1-, 5- and 15-minute load averages).
            "load_average_at_start": [round(x, 2) for x in load_at_start],
            # This process and its finished children (the probes, the tracer), plus what
            # each run spent in its forkserver process, which this process's rusage never
            # counts (nor the forkserver's own imports, a few seconds).
            "cpu_seconds": round(
                sum(
                    usage.ru_utime + usage.ru_stime
                    for usage in (
                        resource.getrusage(resource.RUSAGE_SELF),
                        resource.getrusage(resource.RUSAGE_CHILDREN),
                    )
                )
                + sum(r.get("process_cpu_seconds", 0.0) for r in runs),
                1,
            ),
        },
    }
    results = summarize(measured)
    _write(results, out_dir, publish, started=started)
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
    n_seeds = len(setup["seeds"])
    sweep_table = {
        key: {
            f"{lr:g}": {
                f"seed {first_seed}": analysis.final(chosen[0]),
                f"mean of {n_seeds} seeds": {
                    m: analysis.spread(analysis.final(r)[m] for r in chosen)
                    for m in analysis.METRICS
                }
                if len(chosen) == n_seeds
                else None,
            }
            for lr in sorted({r["learning_rate"] for r in runs if r["key"] == key})
            if (chosen := analysis.select(runs, key, lr)) and chosen[0]["seed"] == first_seed
        }
        for key in SWEPT
    }
    # Files written before picks rested on every seed: the stored pick, from the first seed.
    picks = measured.get("learning_rate_pick") or {
        key: {
            **analysis.pick_learning_rate(
                [r for r in runs if r["seed"] == first_seed], key, [first_seed], setup["sweep"]
            ),
            "learning_rate": measured["best_learning_rate"][key],
        }
        for key in SWEPT
    }
    derived = {
        "claims": claims,
        "verdicts": verdicts,
        "per_variant": per_variant,
        "learning_rate_pick": picks,
        "sweep_table": sweep_table,
    }
    results = {**measured, **derived}
    results["discussion"] = report.discussion(results)
    results["advisor_evidence"] = report.advisor_evidence(results)
    return results


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


def _write(
    results: dict[str, Any],
    out_dir: Path | None,
    publish: bool,
    rendered: bool = False,
    started: float | None = None,
) -> None:
    from bench.evidence import report

    mode = results["mode"]
    path = _results_path(mode, out_dir)
    plot_dir = path.with_suffix("")
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots = {"eval_loss": plot_dir / "eval-loss.png", "memory": plot_dir / "memory.png"}
    report.plot_eval_loss(results, plots["eval_loss"])
    report.plot_memory(results, plots["memory"])
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
    report.write_json(path, results)
    _log(f"results: {path}; plots: {plot_dir}")
    if publish:
        markdown_path, evidence_path = PUBLISHED_MARKDOWN, PUBLISHED_EVIDENCE
    else:
        markdown_path, evidence_path = (
            plot_dir / "BENCHMARKS.md",
            plot_dir / "advisor-evidence.json",
        )
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
    parser.add_argument(
        "--quick",
        action="store_const",
        const="quick",
        dest="mode",
        help="the same pipeline with a smaller base, fewer steps, seeds and learning rates "
        "(its measured times: BENCHMARKS.md); never publishes",
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
    started = time.perf_counter()
    args = parser.parse_args(argv)
    if args.render:
        stored = json.loads(args.render.read_text(encoding="utf-8"))
        if "majority_by_kind" not in stored["setup"]:  # results written before it was kept
            stored["setup"]["majority_by_kind"] = _majority_again(stored)
        if "timing" not in stored:  # results written before the run's timing was kept
            stored["timing"] = {
                "total_seconds": stored.pop("runtime_seconds", None),
                "cpu_seconds": stored.pop("cpu_seconds", None),
                "base_cached": bool(stored["base"].get("cached")),
                "base_seconds": None,
            }
        results = summarize(stored)
        publish = results["mode"] == "full" and args.out is None and not args.no_publish
        _write(results, args.out, publish, rendered=True)
        return results
    mode = MODES[args.mode or "full"]
    publish = mode.name == "full" and args.out is None and not args.no_publish
    results = run(mode, args.out, publish, args.keep, max(1, args.jobs), started)
    timing = results["timing"]
    _log(
        f"done in {timing['total_seconds'] / 60:.1f} minutes (base "
        f"{'from the cache' if timing['base_cached'] else 'built'}: "
        f"{timing['base_seconds'] / 60:.1f} of them)"
    )
    for claim, verdict in results["verdicts"].items():
        print(f"{claim:>10}: {verdict['verdict']}")
    return results
