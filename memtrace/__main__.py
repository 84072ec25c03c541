"""`python -m memtrace [--request request.json] < request.json`: trace one request.

Measures the GPU memory of training steps of a model built from its config on the meta
device and prints `{"estimate": ..., "trace": ...}` on one line. The request (from the file,
or stdin) is `{"config": <config.json>, "training": <advisor TrainingSettings fields>,
"variant": ..., "combine_with": [...], "lora_dropout": null}`. `memtrace.runner` starts this
command in a subprocess with a time limit, so torch never loads in the API or the CLI.

Exit status: 0 traced, 2 a refused request (printed as `{"error": "TraceRefused", "field":
..., "detail": ...}` on stdout), anything else is a crash.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

EXIT_REFUSED = 2


def cmd_trace(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from advisor.errors import InvalidInput
    from advisor.profile import TrainingSettings
    from advisor.variants import combination
    from memtrace.build import ConfigError
    from memtrace.trace import trace_memory

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memtrace", description=__doc__.splitlines()[0])
    parser.add_argument("--request", help="request JSON file (default: read stdin)")
    return cmd_trace(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
