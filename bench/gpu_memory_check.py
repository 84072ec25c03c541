"""Measured GPU memory of whole training runs beside the analytic and the traced estimates.

    python -m bench.gpu_memory_check --out bench/results/gpu_memory_check.json   # one GPU
    python -m bench.gpu_memory_check --dry-run    # anywhere: configurations and estimates

Three random-init models built from catalog configs (Llama-3.1-8B, Llama-3.2-3B,
Llama-3.2-1B) x LoRA, QLoRA, DoRA x two settings: 512 tokens without gradient
checkpointing and 2048 with it, micro batches of 4. Each configuration runs in a fresh
process with the worker's allocator setting (`PYTORCH_CUDA_ALLOC_CONF`, from
`advisor.memory.WORKER_ALLOCATOR_CONF`) in its environment before CUDA initialises: the model
is built on the GPU as `memtrace.build` builds it for a trace (real bitsandbytes NF4, peft's
prepare_model_for_kbit_training, the worker's LoRA config), then at least 20 optimizer steps
of the tracer's Trainer-like loop run on padded micro batches of varying length: each row's
length drawn from [seq_len/8, seq_len] with a fixed seed, the batch padded to its longest row,
and one step mid-run reaching seq_len, the cap the estimate is for. The table gives the
step's `torch.cuda.max_memory_allocated` against `peak_allocated_gib`, and the whole run's
`max_memory_reserved` (load and steps) against `reserved_gib` and `total_gib`.

The load is measured from peft's prepare_model_for_kbit_training on (for LoRA, from the
start): the bench's from_config materialises every bf16 weight before bitsandbytes quantizes
them, which the worker's from_pretrained never does (it quantizes each weight as it loads).

Order and time: both estimates of every configuration are computed first, on the CPU, in a
pool of `--jobs` processes (the meta-device traces take seconds each), so the GPU processes
only build and train; `--parallel` of them share the card at a time (each process has its own
allocator and statistics; the three largest are estimated at 107 GiB together, under the
H200's 139). Largest model first: a configuration starts only with `MIN_CONFIG_S` left of
`--budget-s` (270 s by default, the whole command inside 5 minutes on one H200) and is
stopped at the budget, so what a slow machine drops is the small models. The exit status is
1 when any configuration failed or was skipped: 0 only for a whole table. `--out` writes the
rows as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from advisor.memory import WORKER_ALLOCATOR_CONF

GIB = 2**30
MIN_CONFIG_S = 25.0  # an 8B configuration takes 15-30 s on an H200: none starts with less

# Largest first: see the module's docstring.
MODELS = ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.2-1B")
VARIANTS = ("lora", "qlora", "dora")
SETTINGS = (
    {"seq_len": 512, "micro_batch_size": 4, "gradient_checkpointing": False},
    {"seq_len": 2048, "micro_batch_size": 4, "gradient_checkpointing": True},
)
# Optimizer steps by model: fewer for the larger (each takes longer), never under 20.
STEPS = {MODELS[0]: 20, MODELS[1]: 24, MODELS[2]: 30}
SEED = 0


def _parameters(model: str) -> int:
    from advisor.catalog.models import find_model

    return int(find_model(model).architecture.summary()["total_params"])


def configurations(models=MODELS, variants=VARIANTS) -> list[dict[str, Any]]:
    """Every configuration, in the order the GPU runs them: largest model first."""
    out = []
    for model in sorted(models, key=_parameters, reverse=True):
        for setting in SETTINGS:
            for variant in variants:
                out.append(
                    {
                        "model": model,
                        "variant": variant,
                        "steps": STEPS.get(model, 20),
                        "training": {**setting, "lora_rank": 16, "precision": "bf16"},
                    }
                )
    return out


def label(cfg: dict[str, Any]) -> str:
    t = cfg["training"]
    ckpt = "ckpt" if t["gradient_checkpointing"] else "nockpt"
    return (
        f"{cfg['model'].split('/')[-1]} {cfg['variant']} "
        f"s{t['seq_len']} b{t['micro_batch_size']} {ckpt}"
    )


def batch_lengths(cfg: dict[str, Any]) -> list[list[int]]:
    """Each step's row lengths: drawn from [seq_len/8, seq_len] with a fixed seed, and one
    row of the middle step at seq_len (after shorter batches have come and gone)."""
    import random

    t = cfg["training"]
    rng = random.Random(f"{SEED}-{label(cfg)}")
    seq, rows = t["seq_len"], t["micro_batch_size"]
    steps = [[rng.randint(seq // 8, seq) for _ in range(rows)] for _ in range(cfg["steps"])]
    steps[len(steps) // 2][0] = seq
    return steps


def estimates(cfg: dict[str, Any], trace: bool = True) -> dict[str, Any]:
    """Analytic and (optionally) traced estimates under the worker's allocator: CPU only."""
    from advisor.catalog.models import find_model
    from advisor.memory import estimate
    from advisor.profile import TrainingSettings
    from advisor.variants import Combination

    entry = find_model(cfg["model"])
    training = TrainingSettings(**cfg["training"])
    combo = Combination(cfg["variant"])
    analytic = estimate(entry.architecture, training, combo)
    out: dict[str, Any] = {
        "analytic_allocated": analytic.peak_allocated_bytes,
        "analytic_reserved": analytic.reserved_bytes,
        "analytic_total": analytic.total_bytes,
        "analytic_reserved_by": analytic.run.highest.name,
    }
    if trace:
        from memtrace.trace import trace_memory

        result = trace_memory(entry.config, training, combo)
        traced = result.estimate(combo)
        out["trace_allocated"] = traced.peak_allocated_bytes
        out["trace_reserved"] = traced.reserved_bytes
        out["trace_total"] = traced.total_bytes
        out["trace_seconds"] = round(result.seconds, 1)
    return out


@contextlib.contextmanager
def _load_measured_from_prepare():
    """Reset the allocator's peak statistics when peft's prepare_model_for_kbit_training
    starts (see the module's docstring): memtrace.build imports it from peft when it runs."""
    import peft
    import torch

    original = peft.prepare_model_for_kbit_training

    def measured(*args, **kwargs):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return original(*args, **kwargs)

    peft.prepare_model_for_kbit_training = measured
    try:
        yield
    finally:
        peft.prepare_model_for_kbit_training = original


def _padded_batch(lengths: list[int], vocab: int, generator):
    """A micro batch as the worker's PadCollator makes it: right padding to the longest row,
    the attention mask 0 and the labels -100 on the padding."""
    import torch

    width = max(lengths)
    ids = torch.randint(0, vocab, (len(lengths), width), generator=generator)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    labels = torch.full((len(lengths), width), -100, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        labels[row, :length] = ids[row, :length]
    return {"input_ids": ids.cuda(), "attention_mask": mask.cuda(), "labels": labels.cuda()}


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """Build on CUDA and train `cfg["steps"]` steps of varying length; what torch counts.
    Runs in its own process, with the worker's allocator setting already in the environment."""
    if os.environ.get("PYTORCH_CUDA_ALLOC_CONF") != WORKER_ALLOCATOR_CONF:
        raise SystemExit(f"PYTORCH_CUDA_ALLOC_CONF must be {WORKER_ALLOCATOR_CONF!r}")
    import torch

    from advisor.catalog.models import find_model
    from advisor.profile import TrainingSettings
    from advisor.variants import Combination
    from memtrace import build
    from memtrace.trace import _optimizer, make_plan

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --dry-run")
    started = time.perf_counter()
    plan = make_plan(TrainingSettings(**cfg["training"]), Combination(cfg["variant"]))
    torch.manual_seed(SEED)
    torch.cuda.reset_peak_memory_stats()
    with _load_measured_from_prepare():
        model = build.build_model(find_model(cfg["model"]).config, plan, "cuda")
    torch.cuda.synchronize()
    load = (torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved())
    torch.cuda.reset_peak_memory_stats()

    optimizer = _optimizer(model, plan, "cuda", "cuda", [])
    max_grad_norm = build.training_arguments(plan).max_grad_norm
    trainable = [p for p in model.parameters() if p.requires_grad]
    vocab = model.get_base_model().config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(SEED)
    for lengths in batch_lengths(cfg):
        batch = _padded_batch(lengths, vocab, generator)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        del batch
        loss.backward()
        del loss
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    steps = (torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved())
    return {
        "load_allocated": load[0],
        "load_reserved": load[1],
        "steps_allocated": steps[0],
        "steps_reserved": steps[1],
        "reserved": max(load[1], steps[1]),
        "allocator_conf": os.environ["PYTORCH_CUDA_ALLOC_CONF"],
        "measure_seconds": round(time.perf_counter() - started, 1),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }


def _estimated(cfg: dict[str, Any], trace: bool) -> dict[str, Any]:
    """A row with both estimates, or with the error that stopped them."""
    try:
        return {"config": cfg, "label": label(cfg), **estimates(cfg, trace=trace)}
    except Exception:
        return {"config": cfg, "label": label(cfg), "error": traceback.format_exc()[-500:]}


def estimate_all(configs: list[dict[str, Any]], trace: bool, jobs: int) -> list[dict[str, Any]]:
    """Both estimates of every configuration, on the CPU, before any GPU run."""
    if jobs <= 1 or len(configs) <= 1:
        return [_estimated(cfg, trace) for cfg in configs]
    # Fresh interpreters, not forks: a fork of a process that has run torch's thread pools
    # can hang, and CUDA must not be initialised before the GPU processes start.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        return list(pool.map(_estimated, configs, [trace] * len(configs)))


def _in_subprocess(cfg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """A fresh process per configuration: allocator statistics and caches start empty, and
    the allocator setting is in its environment before CUDA initialises."""
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": WORKER_ALLOCATOR_CONF}
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-W",
                "ignore",
                "-m",
                "bench.gpu_memory_check",
                "--one",
                json.dumps(cfg),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=Path(__file__).resolve().parents[1],
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"stopped at the budget ({timeout_s:.0f} s)"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:] or f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(rows: list[dict[str, Any]], budget_s: float, parallel: int, started: float) -> None:
    """The GPU runs, `parallel` at a time, in order; each starts only with time left."""

    def one(row: dict[str, Any]) -> None:
        left = budget_s - (time.perf_counter() - started)
        if "error" in row:
            return
        if left < MIN_CONFIG_S:
            row["error"] = f"skipped: the budget was spent ({budget_s - left:.0f} s)"
            return
        print(f"{row['label']} ...", file=sys.stderr, flush=True)
        row.update(_in_subprocess(row["config"], timeout_s=left))

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        list(pool.map(one, rows))


def _pct(estimate: float | None, measured: float | None) -> str:
    if not estimate or not measured:
        return "-"
    return f"{estimate / measured - 1:+.1%}"


def _g(value: float | None) -> str:
    return f"{value / GIB:.2f}" if value else "-"


def print_table(rows: list[dict[str, Any]], dry_run: bool) -> None:
    """GiB. Allocated: the step's peak against max_memory_allocated over the steps.
    Reserved: the whole run's against max_memory_reserved over the load and the steps."""
    head = f"{'configuration':<34} {'alloc':>6} {'trace':>6} {'reserv':>6} {'total':>6}"
    if not dry_run:
        head += f" | {'m.alloc':>7} {'err':>6} {'t.err':>6} | {'m.resv':>6} {'err':>6} {'total':>6}"
    print(head)
    for row in rows:
        if "error" in row and "analytic_allocated" not in row:
            print(f"{row['label']:<34} error: {row['error'].splitlines()[-1][:120]}")
            continue
        line = (
            f"{row['label']:<34} {_g(row['analytic_allocated']):>6} "
            f"{_g(row.get('trace_allocated')):>6} {_g(row['analytic_reserved']):>6} "
            f"{_g(row['analytic_total']):>6}"
        )
        if not dry_run:
            if "error" in row:
                line += f" | error: {row['error'].splitlines()[-1][:80]}"
            else:
                alloc, reserved = row["steps_allocated"], row["reserved"]
                line += (
                    f" | {_g(alloc):>7} {_pct(row['analytic_allocated'], alloc):>6} "
                    f"{_pct(row.get('trace_allocated'), alloc):>6} | {_g(reserved):>6} "
                    f"{_pct(row['analytic_reserved'], reserved):>6} "
                    f"{_pct(row['analytic_total'], reserved):>6}"
                )
        print(line)
    print(
        "GiB; alloc/trace: peak_allocated (analytic, traced) against the steps' "
        "max_memory_allocated; reserv/total: the whole run's estimate against "
        f"max_memory_reserved over the load and the steps; allocator {WORKER_ALLOCATOR_CONF}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_memory_check", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="no GPU: estimates only")
    parser.add_argument("--no-trace", action="store_true", help="skip the meta-device traces")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(16, os.cpu_count() or 1),
        help="processes computing the estimates before the GPU runs (default: up to 16)",
    )
    parser.add_argument(
        "--parallel", type=int, default=3, help="GPU processes at a time (default 3)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=270.0,
        help="the whole command ends by then: a configuration starts only with "
        f"{MIN_CONFIG_S:.0f} s left, and is stopped at the budget (default 270 s)",
    )
    parser.add_argument("--out", type=Path, help="write the rows as JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:  # the subprocess side: GPU only
        print(json.dumps(measure(json.loads(args.one))))
        return 0

    started = time.perf_counter()
    configs = configurations(tuple(args.models), tuple(args.variants))
    rows = estimate_all(configs, trace=not args.no_trace, jobs=args.jobs)
    print(
        f"estimates of {len(rows)} configurations: {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    if not args.dry_run:
        run_all(rows, args.budget_s, args.parallel, started)
    print_table(rows, args.dry_run)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    failed = [row["label"] for row in rows if "error" in row]
    if failed:
        print(f"{len(failed)} of {len(rows)} configurations failed or were skipped")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
