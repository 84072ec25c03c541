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
held-out set evaluated along the way (`bench.evidence.runs`). Then, in order
(`bench.evidence.pipeline`; the modes in `bench.evidence.modes`):

1. grid: every variant at the base learning rate, on every seed (seeds interleaved, so a slow
   spell of a shared machine hits every variant alike);
2. sweep: LoRA and LoRA+ at each learning rate of the sweep on the first seed; the
   `finalists` best of them (lowest final held-out loss) also on the other seeds, and each
   one's best rate is the lowest mean over seeds among the rates run on every seed (the base
   rate always is); a pick at the edge of the sweep is flagged. QLoRA and QLoRA + LoRA+ then
   run at LoRA's and LoRA+'s picks on every seed;
3. memory: each variant's run again, a few steps, each in a fresh process (`probe`);
4. figures per claim (`analysis`), verdicts (`verdicts`), the discussion (`discussion`), the
   advisor's evidence file (`evidence_file`), plots (`plots`) and BENCHMARKS.md
   (`benchmarks_md`), written by `outputs`.

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
import os
import time
from pathlib import Path
from typing import Any

from bench.evidence.log import log
from bench.evidence.modes import MODES
from bench.evidence.outputs import read_stored, write
from bench.evidence.pipeline import run
from bench.evidence.summary import summarize


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
        measured = read_stored(args.render)
    else:
        measured = run(MODES[args.mode or "full"], args.keep, max(1, args.jobs), started)
    results = summarize(measured)
    publish = results["mode"] == "full" and args.out is None and not args.no_publish
    write(results, args.out, publish, rendered=bool(args.render), started=started)
    if args.render:
        return results
    timing = results["timing"]
    log(
        f"done in {timing['total_seconds'] / 60:.1f} minutes (base "
        f"{'from the cache' if timing['base_cached'] else 'built'}: "
        f"{timing['base_seconds'] / 60:.1f} of them)"
    )
    for claim, verdict in results["verdicts"].items():
        print(f"{claim:>10}: {verdict['verdict']}")
    return results
