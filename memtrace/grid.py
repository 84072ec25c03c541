"""The calibration grid: trace many configurations, keep the results, compare the analytic model.

    python -m memtrace.grid run --out tests/advisor/data/trace_grid.json [--jobs 2]
    python -m memtrace.grid run --out tests/advisor/data/trace_grid.json --update \
        --variants qlora    # retrace only these rows, keep the others
    python -m memtrace.grid table --grid tests/advisor/data/trace_grid.json

`run` traces every configuration of `configurations()` (architectures from the model catalog
x the four variants x sequence lengths x micro batches x gradient checkpointing) on the meta
device for a CUDA target and writes one record per configuration with the traced peak, its
breakdown and the library versions. `table` prints the analytic model's error against it,
per variant (the table published in docs/memory.md). With `--update`, only the selected
configurations (`--models`, `--variants`, `--match` on row ids) are retraced and the other
rows of the file are kept: for a tracer change that can only touch some rows (the whole grid
takes about 22 minutes on 2 cores); the tests' byte-equal retraces then check the kept rows.

Tests hold the analytic model to the stored grid and retrace a sample of it on every run,
so the file cannot go stale unnoticed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from advisor.variants import CALIBRATED_VARIANTS

# Dense decoders of several families and sizes: small heads and tied embeddings (SmolLM2),
# q/k/v biases and a 152k vocabulary (Qwen2.5), 128k vocabulary and tied head (Llama-3.2),
# narrow GQA (TinyLlama), fused qkv and gate_up (Phi-3), multi-head 7B (Llama-2), GQA 8B with
# the 128k vocabulary (Llama-3), sliding-window attention (Mistral), and eager attention with
# soft-capped logits, four norms per block and a 256k vocabulary (Gemma-2: transformers has no
# sdpa for it, so the worker trains it with eager attention).
ARCHITECTURES = (
    "HuggingFaceTB/SmolLM2-135M",
    "Qwen/Qwen2.5-0.5B",
    "meta-llama/Llama-3.2-1B",
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
    "microsoft/Phi-3-mini-4k-instruct",
    "meta-llama/Llama-2-7b-hf",
    "meta-llama/Meta-Llama-3-8B",
    "mistralai/Mistral-7B-v0.1",
    "google/gemma-2-2b",
)
VARIANTS = CALIBRATED_VARIANTS
SEQ_LENS = (512, 2048)
MICRO_BATCHES = (1, 4)
CHECKPOINTING = (True, False)


def configurations(architectures: Iterable[str] = ARCHITECTURES) -> list[dict[str, Any]]:
    """Every grid point as a plain dict (model, variant, training settings)."""
    out = []
    for model in architectures:
        for variant in VARIANTS:
            for seq_len in SEQ_LENS:
                for micro_batch in MICRO_BATCHES:
                    for checkpointing in CHECKPOINTING:
                        out.append(
                            {
                                "model": model,
                                "variant": variant,
                                "combine_with": [],
                                "training": {
                                    "seq_len": seq_len,
                                    "micro_batch_size": micro_batch,
                                    "gradient_checkpointing": checkpointing,
                                    "lora_rank": 16,
                                    "target_modules": "all-linear",
                                    "optimizer": "adamw",
                                    "precision": "bf16",
                                },
                            }
                        )
    return out


def row_id(row: dict[str, Any]) -> str:
    t = row["training"]
    variant = "+".join([row["variant"], *row["combine_with"]])
    return (
        f"{row['model'].split('/')[-1]}-{variant}-s{t['seq_len']}-b{t['micro_batch_size']}-"
        f"{'ckpt' if t['gradient_checkpointing'] else 'nockpt'}"
    )


def trace_row(row: dict[str, Any]) -> dict[str, Any]:
    """Trace one grid point (CUDA target, meta device)."""
    from advisor.catalog.models import find_model
    from advisor.profile import TrainingSettings
    from advisor.variants import combination
    from memtrace.trace import trace_memory

    config = find_model(row["model"]).config
    result = trace_memory(
        config,
        TrainingSettings(**row["training"]),
        combination(row["variant"], row["combine_with"]),
    )
    return {
        **row,
        "id": row_id(row),
        "peak_bytes": result.peak_bytes,
        "peak_phase": result.peak_phase,
        "by_kind_bytes": result.by_kind,
        "attention_kernels": result.attention_kernels,
        "seconds": round(result.seconds, 2),
    }


def analytic_bytes(row: dict[str, Any]) -> float:
    """The analytic model's peak allocated bytes for a grid point."""
    from advisor.catalog.models import find_model
    from advisor.memory import estimate
    from advisor.profile import TrainingSettings
    from advisor.variants import combination

    arch = find_model(row["model"]).architecture
    combo = combination(row["variant"], row["combine_with"])
    return estimate(arch, TrainingSettings(**row["training"]), combo).peak_allocated_bytes


def errors(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Relative error of the analytic model against the trace, per variant."""
    out: dict[str, list[float]] = {}
    for row in rows:
        err = analytic_bytes(row) / row["peak_bytes"] - 1
        out.setdefault("+".join([row["variant"], *row["combine_with"]]), []).append(err)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: per variant, configurations, median and worst absolute error."""
    lines = [
        "| variant | configurations | median error | worst error | worst configuration |",
        "|---|---:|---:|---:|---|",
    ]
    per = errors(rows)
    everything: list[float] = []
    for variant, errs in per.items():
        everything += errs
        worst_index = max(range(len(errs)), key=lambda i: abs(errs[i]))
        worst_row = [r for r in rows if "+".join([r["variant"], *r["combine_with"]]) == variant][
            worst_index
        ]
        lines.append(
            f"| {variant} | {len(errs)} | {statistics.median(abs(e) for e in errs):.1%} | "
            f"{errs[worst_index]:+.1%} | {row_id(worst_row)} |"
        )
    lines.append(
        f"| all | {len(everything)} | {statistics.median(abs(e) for e in everything):.1%} | "
        f"{max(everything, key=abs):+.1%} | |"
    )
    return "\n".join(lines)


def merge(
    kept: dict[str, dict[str, Any]], fresh: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The fresh rows, except that a row whose figures did not change keeps its stored
    record (its `seconds` are those of another run): the file's diff is the change."""
    return {
        key: kept[key] if key in kept and _figures(kept[key]) == _figures(row) else row
        for key, row in fresh.items()
    }


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "seconds"}


def run(
    out: Path,
    jobs: int,
    architectures: Iterable[str],
    variants: Iterable[str] = VARIANTS,
    update: bool = False,
    match: Iterable[str] = ("*",),
) -> None:
    from memtrace.runner import TRACER_VERSION, library_versions

    wanted, patterns = set(variants), list(match)
    rows = [
        r
        for r in configurations(architectures)
        if r["variant"] in wanted and any(fnmatch.fnmatch(row_id(r), p) for p in patterns)
    ]
    kept: dict[str, dict[str, Any]] = {}
    previous_seconds = None
    if update:
        document = json.loads(out.read_text(encoding="utf-8"))
        if document["versions"] != library_versions():
            raise SystemExit("the libraries changed since the grid was traced: retrace all of it")
        kept = {r["id"]: r for r in document["rows"]}
        previous_seconds = document["seconds"]
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for i, result in enumerate(pool.map(trace_row, rows, chunksize=4), 1):
            results[result["id"]] = result
            before = kept.get(result["id"])
            change = ""
            if before is not None:
                delta = result["peak_bytes"] - before["peak_bytes"]
                change = f", {delta:+d} bytes" if delta else ", unchanged"
            print(
                f"[{i}/{len(rows)}] {result['id']}: {result['peak_bytes'] / 2**30:.3f} GiB "
                f"({result['seconds']} s{change})",
                file=sys.stderr,
                flush=True,
            )
    seconds = round(time.perf_counter() - started, 1)
    # The grid's order for its own models, then any other model asked for (--models) in the
    # order traced: a row is never traced and then left out of the file.
    ordered = list(dict.fromkeys([row_id(c) for c in configurations()] + [*kept, *results]))
    merged = {**kept, **merge(kept, results)}
    document = {
        "about": "Traced peak allocated bytes (CUDA target, meta device) of the calibration grid; "
        "written by `python -m memtrace.grid run`.",
        "versions": library_versions(),
        "tracer_version": TRACER_VERSION,
        # The time of a whole run (an update keeps the last whole run's).
        "seconds": previous_seconds if update else seconds,
        "rows": [merged[i] for i in ordered if i in merged],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memtrace.grid")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="trace the grid and write it")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--models", nargs="*", default=list(ARCHITECTURES))
    r.add_argument("--variants", nargs="*", default=list(VARIANTS))
    r.add_argument(
        "--match",
        nargs="*",
        default=["*"],
        help="only rows whose id matches one of these shell patterns, e.g. '*-nockpt'",
    )
    r.add_argument(
        "--update",
        action="store_true",
        help="retrace only the selected rows and keep the file's other rows",
    )
    t = sub.add_parser("table", help="print the analytic model's error table")
    t.add_argument("--grid", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.out, args.jobs, args.models, args.variants, args.update, args.match)
    else:
        rows = json.loads(args.grid.read_text(encoding="utf-8"))["rows"]
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
