"""`python -m worker <command>`: run worker jobs without Celery.

    python -m worker train --plan plan.json [--no-resume]

runs one plan and prints the `TrainingResult` as JSON on stdout (everything else the
libraries print goes to stderr). `--plan` takes a bare plan or the `plan.json` record of a
finished run. Events and progress go to stderr as JSON lines.

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


def cmd_train(args: argparse.Namespace) -> int:
    from worker.errors import WorkerError
    from worker.plan import load_plan
    from worker.training import run_training

    try:
        plan = load_plan(args.plan)
        # Libraries print progress and notices to stdout; keep stdout for the result alone.
        with contextlib.redirect_stdout(sys.stderr):
            result = run_training(plan, StderrHooks(), resume=args.resume)
    except WorkerError as exc:
        print(json.dumps({"error": type(exc).__name__, "detail": str(exc)}))
        return EXIT_REFUSED
    print(result.model_dump_json(indent=2))
    return 0 if result.status == "succeeded" else EXIT_CANCELLED


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"train": cmd_train}


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
