"""`python -m worker <command>`: run worker jobs without Celery.

    python -m worker train --plan plan.json [--no-resume]
    python -m worker trace [--request request.json] < request.json

`train` runs one plan and prints the `TrainingResult` as JSON on stdout (everything else the
libraries print goes to stderr). `--plan` takes a bare plan or the `plan.json` record of a
finished run. Events and progress go to stderr as JSON lines.

`trace` measures the GPU memory of training steps of a model built from its config on the
meta device (`worker.memtrace`) and prints `{"estimate": ..., "trace": ...}` on one line. The
request (from the file, or stdin) is `{"config": <config.json>, "training": <advisor
TrainingSettings fields>, "variant": ..., "combine_with": [...], "lora_dropout": null}`.

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


def cmd_trace(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from advisor.errors import InvalidInput
    from advisor.profile import TrainingSettings
    from advisor.variants import combination
    from worker.memtrace.build import ConfigError
    from worker.memtrace.trace import trace_memory

    def refuse(field: str, detail: str) -> int:
        print(json.dumps({"error": "TraceRefused", "field": field, "detail": detail}))
        return EXIT_REFUSED

    try:
        text = open(args.request).read() if args.request else sys.stdin.read()  # noqa: SIM115
        request = json.loads(text)
        training = TrainingSettings.model_validate(request.get("training") or {})
        combo = combination(request.get("variant", "lora"), request.get("combine_with") or [])
        config = request["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        return refuse("body", f"the trace request is not readable ({exc}); see `--help`")
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "training." + ".".join(str(p) for p in first["loc"])
        return refuse(field, first["msg"])
    except InvalidInput as exc:
        return refuse(exc.problems[0].field, exc.problems[0].message)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = trace_memory(config, training, combo, lora_dropout=request.get("lora_dropout"))
    except ConfigError as exc:
        return refuse(exc.field, exc.message)
    out = {
        "estimate": result.estimate(combo).as_dict(),
        "trace": {
            "peak_bytes": result.peak_bytes,
            "by_kind_bytes": result.by_kind,
            "peak_phase": result.peak_phase,
            "attention_kernels": result.attention_kernels,
            "holds_score_matrix": result.holds_scores,
            "target": result.target,
            "ops": result.ops,
            "seconds": round(result.seconds, 3),
        },
    }
    print(json.dumps(out))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"train": cmd_train, "trace": cmd_trace}


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
    trace = commands.add_parser(
        "trace", help="trace the GPU memory of training steps of a model on the meta device"
    )
    trace.add_argument("--request", help="request JSON file (default: read stdin)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
