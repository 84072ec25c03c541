"""`python -m worker <command>`: run worker jobs without Celery.

    python -m worker train --plan plan.json [--no-resume] [--result result.json]
    python -m worker merge --adapter <job dir or adapter dir> --out <dir> [--base MODEL]
                           [--dtype bf16|fp16|fp32]

Under torchrun (`python -m torch.distributed.run --nproc_per_node N -m worker train ...`)
each process is one rank of a run on N cards (`worker.distributed`): rank 0 alone reports
and answers, and a cancelled rank exits 0 (the result says "cancelled").

`train` runs one plan and prints the `TrainingResult` as JSON on stdout (everything else the
libraries print goes to stderr). `--plan` takes a bare plan or the `plan.json` record of a
finished run. Events and progress go to stderr as JSON lines.

`merge` merges a finished run's adapter into its base (`worker.merge`: safetensors, config,
tokenizer, `loracle-merge.json`) and prints the `MergeResult` as JSON. The base is the model
the run's `plan.json` names unless `--base` says otherwise.

The memory tracer has a command of its own: `python -m memtrace`.

Exit status: 0 succeeded, 3 cancelled, 2 a refused plan, data file or model (the error is
printed as `{"error": ..., "detail": ...}` on stdout), anything else is a crash.

New commands add a parser in `build_parser` and a handler in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.training import TrainingHooks

EXIT_REFUSED, EXIT_CANCELLED = 2, 3


class StderrHooks(TrainingHooks):
    """Training hooks that write each event and progress report to stderr as a JSON line."""

    def on_event(self, type: str, data: dict[str, Any]) -> None:
        print(json.dumps({"event": type, **data}), file=sys.stderr, flush=True)

    def on_progress(self, step, total_steps, loss, learning_rate, tokens_per_second, eta_seconds):
        report = {
            "progress": step,
            "total_steps": total_steps,
            "loss": loss,
            "learning_rate": learning_rate,
            "tokens_per_second": tokens_per_second,
            "eta_seconds": eta_seconds,
        }
        print(json.dumps(report), file=sys.stderr, flush=True)


def _job_hooks(args: argparse.Namespace) -> TrainingHooks:
    """Rank 0's hooks: the job store's (`--job`, under the worker) or JSON lines on stderr."""
    if args.job is None:
        return StderrHooks()
    from loracle.settings import get_settings
    from worker.service import StoreHooks

    return StoreHooks(get_settings(), args.job, args.lease_token)


def cmd_train(args: argparse.Namespace) -> int:
    from loracle.errors import LoracleError
    from loracle.plan import load_plan
    from worker import distributed
    from worker.training import run_training

    rank = distributed.world()[0]
    hooks: TrainingHooks | None = None
    answer: dict[str, Any]
    try:
        plan = load_plan(args.plan)
        hooks = _job_hooks(args) if rank == 0 else TrainingHooks()
        # Libraries print progress and notices to stdout; keep stdout for the result alone.
        with contextlib.redirect_stdout(sys.stderr):
            if distributed.in_distributed_launch():
                result = distributed.run_rank(plan, hooks, resume=args.resume)
            else:
                result = run_training(plan, hooks, resume=args.resume)
    except LoracleError as exc:
        answer = {"error": type(exc).__name__, "detail": str(exc)}
        _answer(args, rank, answer)
        return EXIT_REFUSED
    except BaseException as exc:
        # Under the worker the launcher's caller reads rank 0's error from --result.
        _answer(args, rank, {"error": type(exc).__name__, "detail": str(exc)})
        raise
    finally:
        if hooks is not None and hasattr(hooks, "close"):
            hooks.close()
        distributed.end_rank()
    _answer(args, rank, json.loads(result.model_dump_json()))
    if distributed.in_distributed_launch():
        return 0  # a cancel is an answer, not a failed rank: torchrun must not report one
    return 0 if result.status == "succeeded" else EXIT_CANCELLED


def _answer(args: argparse.Namespace, rank: int, answer: dict[str, Any]) -> None:
    """The result (or refusal) on stdout, or in the `--result` file; from rank 0 only."""
    if rank != 0:
        return
    text = json.dumps(answer, indent=2)
    if args.result is None:
        print(text)
        return
    from worker.artifacts import write_json

    write_json(args.result, answer)


def cmd_merge(args: argparse.Namespace) -> int:
    from loracle.errors import LoracleError
    from worker import artifacts
    from worker.merge import adapter_plan, merge_adapter

    adapter = args.adapter
    if (
        not (adapter / "adapter_config.json").is_file()
        and (adapter / artifacts.ADAPTER_DIRNAME / "adapter_config.json").is_file()
    ):
        adapter = adapter / artifacts.ADAPTER_DIRNAME  # a job's or a run's output directory
    try:
        base = args.base
        if base is None:
            plan = adapter_plan(adapter)
            if plan is None:
                raise SystemExit(f"{adapter} has no plan.json naming its base; pass --base")
            base = plan.model
        with contextlib.redirect_stdout(sys.stderr):
            result = merge_adapter(base, adapter, args.out, args.dtype, job_id=args.job)
    except LoracleError as exc:
        print(json.dumps({"error": type(exc).__name__, "detail": str(exc)}, indent=2))
        return EXIT_REFUSED
    print(result.model_dump_json(indent=2))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"train": cmd_train, "merge": cmd_merge}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run one training plan")
    train.add_argument("--plan", required=True, help="plan JSON file (or a run's plan.json)")
    train.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start over: delete existing checkpoints instead of resuming the newest",
    )
    train.add_argument(
        "--result", type=Path, help="write the result (or refusal) JSON here, not on stdout"
    )
    train.add_argument(
        "--job", help="the stored job this run is: rank 0 reports to the job store (worker)"
    )
    train.add_argument("--lease-token", type=int, help="with --job: the lease's fencing token")
    merge = commands.add_parser("merge", help="merge a run's adapter into its base")
    merge.add_argument(
        "--adapter", required=True, type=Path, help="adapter directory, or a run's output dir"
    )
    merge.add_argument("--out", required=True, type=Path, help="where the merged model goes")
    merge.add_argument("--base", help="the base model (default: the one plan.json names)")
    merge.add_argument(
        "--dtype", choices=["bf16", "fp16", "fp32"], help="default: the run's precision"
    )
    merge.add_argument("--job", help="the job id to record in loracle-merge.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
