"""The benchmark's runs: build or load the base, write the task, fine-tune every variant on a
pool of processes (grid, sweep, the sweep's finalists, the best rates), probe each variant's
memory in a fresh process, and estimate 7B. `run` returns the measurements; `summarize`
derives the rest and `outputs.write` writes the files."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.evidence import analysis, memory_7b
from bench.evidence.log import log
from bench.evidence.modes import SWEPT, Mode
from bench.evidence.variants import split


def run(mode: Mode, keep: Path | None, jobs: int, started: float) -> dict[str, Any]:
    """Run `mode`; the measurements, as the results file holds them before `summarize`.
    `started`: the perf_counter reading when the command began (its wall time is the run's).
    `keep`: where the runs' adapters and data stay (a temporary directory when None)."""
    load_at_start = os.getloadavg()
    import torch

    _single_thread()
    import bench._common as common
    from bench.evidence.base import build_base, read_corpus
    from bench.evidence.task import majority_by_kind, write_task

    clock = time.perf_counter()
    model_dir, base = build_base(mode.base, log=log)
    base_seconds = time.perf_counter() - clock
    log(
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
        runs, picks = _fine_tune(mode, model_dir, task, work, jobs)
        finetune_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        memory = _probe_all(mode, model_dir, task, work, jobs)
        probe_seconds = time.perf_counter() - clock
    finally:
        if work_ctx:
            work_ctx.cleanup()

    clock = time.perf_counter()
    e7b = memory_7b.estimate(mode.trace_7b, log)
    estimate_seconds = time.perf_counter() - clock
    return {
        "machine": common.machine(),
        "mode": mode.name,
        "setup": _setup(mode, base, task, majority, jobs, torch.get_num_threads()),
        "base": base,
        "best_learning_rate": {key: pick["learning_rate"] for key, pick in picks.items()},
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
            "cpu_seconds": _cpu_seconds(runs),
        },
    }


def _fine_tune(
    mode: Mode, model_dir: Path, task: dict[str, Any], work: Path, jobs: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every fine-tuning run of `mode`, and the learning rate picked for each swept method."""
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
            log(
                f"best learning rate of {key}: {pick['learning_rate']:g} "
                f"(lowest final held-out loss, {pick['picked_on']})"
            )
            if pick["edge"]:
                log(
                    f"WARNING: {key}'s best learning rate {pick['learning_rate']:g} is the "
                    f"{pick['edge']} of the sweep; one beyond it may be better still"
                )
        # The combination with LoRA+ at the rates the sweep found, against QLoRA at LoRA's.
        best = []
        for key, rate in (("qlora", best_lr["lora"]), ("qlora+loraplus", best_lr["loraplus"])):
            if abs(rate - mode.learning_rate) > 1e-12 and key in mode.variants:
                best += [
                    (mode, model_dir, task, work, key, rate, seed, "best") for seed in mode.seeds
                ]
        runs += _run_all(pool, best)
    return runs, picks


def _setup(
    mode: Mode,
    base: dict[str, Any],
    task: dict[str, Any],
    majority: dict[str, float],
    jobs: int,
    threads: int,
) -> dict[str, Any]:
    """What was run, as BENCHMARKS.md describes it."""
    from worker.artifacts import library_versions

    return {
        "command": "python -m bench evidence" + {"full": "", "quick": " --quick"}[mode.name],
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
        f"{threads} torch thread each)",
        "versions": {k: v for k, v in library_versions().items() if v},
        "mode": asdict(mode),
    }


def _cpu_seconds(runs: list[dict[str, Any]]) -> float:
    """This process and its finished children (the probes, the tracer), plus what each run
    spent in its forkserver process, which this process's rusage never counts (nor the
    forkserver's own imports, a few seconds)."""
    return round(
        sum(
            usage.ru_utime + usage.ru_stime
            for usage in (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        )
        + sum(r.get("process_cpu_seconds", 0.0) for r in runs),
        1,
    )


# ---------------------------------------------------------------------------------------------
# Fine-tuning runs, on a pool of forked processes
# ---------------------------------------------------------------------------------------------

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


def _single_thread() -> None:
    """One torch thread per process. Fine-tuning this model multiplies matrices of a few
    hundred columns, which a second thread barely speeds up; and on a machine shared with
    other jobs, OpenMP threads that wait for each other at every operation while one of them
    is descheduled made steps 5-20x slower (measured). Parallelism comes from running two
    fine-tuning processes at once instead (`--jobs`)."""
    import torch

    torch.set_num_threads(1)


def _run_all(pool, jobs: list[tuple]) -> list[dict[str, Any]]:
    """Run `_run(*job)` for every job on the pool; records in the order of `jobs`."""
    futures = [pool.submit(_run, *job) for job in jobs]
    records = []
    for future in futures:
        records.append(future.result())
        _report_run(records[-1])
    return records


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
        # The whole run's, for the benchmark's CPU total (see `_cpu_seconds`).
        "process_cpu_seconds": round(time.process_time() - cpu, 2),
    }


def _plan_fields(mode: Mode, key: str, lr: float, seed: int, steps: int) -> dict[str, Any]:
    variant, ideas = split(key)
    return {
        "variant": variant,
        "combine_with": list(ideas),
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


def _report_run(record: dict[str, Any]) -> None:
    last = record["evals"][-1]
    log(
        f"{record['group']:>5} {record['key']:<15} lr {record['learning_rate']:<7g} seed "
        f"{record['seed']}: held-out loss {last['eval_loss']:.3f}, exact match "
        f"{last['exact_match']:.3f}, median step {record['median_step_cpu_seconds']:.3f}s CPU "
        f"({record['median_step_seconds']:.3f}s wall)"
    )


# ---------------------------------------------------------------------------------------------
# Memory probes, each in a fresh interpreter
# ---------------------------------------------------------------------------------------------


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
            log(
                f"memory {key:<15} weights {figures['model_bytes']['weights'] / 2**20:.2f} MiB, "
                f"peak RSS growth {(growth or 0) / 2**20:.0f} MiB"
            )
    return memory


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
