"""Measured GPU memory of real training steps beside the analytic and the traced estimates.

    python -m bench.gpu_memory_check              # on a CUDA machine: train and measure
    python -m bench.gpu_memory_check --dry-run    # anywhere: list configurations and estimates

For random-init models built from catalog configs (about 1B, 3B and 8B parameters) and the
four variants, each configuration runs in a fresh subprocess: the worker's model is built on
the GPU exactly as `worker.memtrace.build` builds it for a trace (real bitsandbytes NF4 for
QLoRA), then three optimizer steps of the tracer's Trainer-like loop run for real on CUDA
(`trace_memory(device="cuda")`: CUDA autocast, the kernels sdpa picks, the Trainer's
optimizer). The script prints `torch.cuda.max_memory_allocated` and `max_memory_reserved` over
the steps next to the analytic estimate (advisor.memory) and the meta-device trace, and the
error of each estimate against the measured peak.

Order and time: both estimates of every configuration are computed first, on the CPU, in a
pool of `--jobs` processes (the meta-device traces take seconds each and need no GPU), so the
GPU processes only build and train. The GPU runs go largest model first: the run ends by
`--budget-s` (450 s by default, inside the 8 minutes the check must fit on one H200; 16
configurations of about 15-25 s each), a configuration starts only with 30 s left and is
stopped at the budget, so what a slow machine drops is the small models, not the 8B. The exit
status is 1 when any configuration failed or was skipped, 0 only for a whole table. `--out`
writes the table as JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

GIB = 2**30
MIN_CONFIG_S = 30.0  # a configuration takes 15-25 s: none starts with less than this left

# Largest first: see the module's docstring.
MODELS = ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.2-1B")
VARIANTS = ("lora", "qlora", "dora", "loraplus")
# The usual setting for every model, and a padded micro batch without checkpointing (the
# memory-efficient attention path with a mask) on the smallest.
SETTINGS = (
    {"seq_len": 2048, "micro_batch_size": 1, "gradient_checkpointing": True},
    {"seq_len": 1024, "micro_batch_size": 4, "gradient_checkpointing": False},
)


def _parameters(model: str) -> int:
    from advisor.catalog.models import find_model

    return int(find_model(model).architecture.summary()["total_params"])


def configurations(models=MODELS, variants=VARIANTS) -> list[dict[str, Any]]:
    """Every configuration, in the order the GPU runs them: largest model first."""
    out = []
    models = sorted(models, key=_parameters, reverse=True)
    for model in models:
        settings = SETTINGS if model == models[-1] else SETTINGS[:1]
        for setting in settings:
            for variant in variants:
                out.append(
                    {
                        "model": model,
                        "variant": variant,
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


def estimates(cfg: dict[str, Any], trace: bool = True) -> dict[str, Any]:
    """Analytic and (optionally) traced peak allocated bytes: CPU only."""
    from advisor.catalog.models import find_model
    from advisor.memory import estimate
    from advisor.profile import TrainingSettings
    from advisor.variants import Combination

    entry = find_model(cfg["model"])
    training = TrainingSettings(**cfg["training"])
    combo = Combination(cfg["variant"])
    out: dict[str, Any] = {
        "analytic_bytes": estimate(entry.architecture, training, combo).peak_allocated_bytes
    }
    if trace:
        from worker.memtrace.trace import trace_memory

        result = trace_memory(entry.config, training, combo)
        out["trace_bytes"] = result.peak_bytes
        out["trace_phase"] = result.peak_phase
        out["trace_seconds"] = round(result.seconds, 1)
    return out


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """Build on CUDA and train three steps; the peak as torch counts it. Needs a GPU."""
    import torch

    from advisor.catalog.models import find_model
    from advisor.profile import TrainingSettings
    from advisor.variants import Combination
    from worker.memtrace.trace import trace_memory

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --dry-run")
    result = trace_memory(
        find_model(cfg["model"]).config,
        TrainingSettings(**cfg["training"]),
        Combination(cfg["variant"]),
        device="cuda",
        target="cuda",
        steps=3,
    )
    assert result.measured is not None
    return {
        **result.measured,
        "tracker_on_cuda_bytes": result.peak_bytes,
        "measure_seconds": round(result.seconds, 1),
        "gpu": torch.cuda.get_device_name(),
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
    """A fresh process per configuration: allocator statistics and caches start empty. It
    only builds and trains (the estimates are already made)."""
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
        )
    except subprocess.TimeoutExpired:
        return {"error": f"stopped at the budget ({timeout_s:.0f} s)"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:] or f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pct(estimate: float | None, measured: float | None) -> str:
    if not estimate or not measured:
        return "-"
    return f"{estimate / measured - 1:+.1%}"


def print_table(rows: list[dict[str, Any]], dry_run: bool) -> None:
    head = f"{'configuration':<36} {'analytic':>9} {'trace':>9}"
    if not dry_run:
        head += f" {'allocated':>10} {'reserved':>9} {'ana err':>8} {'trace err':>9}"
    print(head)
    for row in rows:
        if "error" in row:
            print(f"{row['label']:<36} error: {row['error'].splitlines()[-1][:120]}")
            continue
        trace = row.get("trace_bytes")
        traced = f"{trace / GIB:9.2f}" if trace else f"{'-':>9}"
        line = f"{row['label']:<36} {row['analytic_bytes'] / GIB:9.2f} {traced}"
        if not dry_run:
            measured = row.get("max_memory_allocated")
            line += (
                f" {measured / GIB:10.2f} {row['max_memory_reserved'] / GIB:9.2f}"
                f" {_pct(row['analytic_bytes'], measured):>8} {_pct(trace, measured):>9}"
            )
        print(line)
    print("GiB; estimates are peak allocated, compared with torch.cuda.max_memory_allocated")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_memory_check", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="no GPU: estimates only")
    parser.add_argument("--no-trace", action="store_true", help="skip the meta-device traces")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes computing the estimates before the GPU runs (default: up to 8)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=450.0,
        help="the whole run ends by then: a configuration starts only with 30 s left, and "
        "is stopped at the budget (default 450 s, inside the 8 minutes the check must fit)",
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
        for i, row in enumerate(rows, 1):
            elapsed = time.perf_counter() - started
            if args.budget_s - elapsed < MIN_CONFIG_S:
                row["error"] = f"skipped: the budget was spent ({elapsed:.0f} s)"
                continue
            print(f"[{i}/{len(rows)}] {row['label']}", file=sys.stderr, flush=True)
            row.update(_in_subprocess(row["config"], timeout_s=args.budget_s - elapsed))
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
