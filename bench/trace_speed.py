"""How long a traced memory estimate takes: the issue's limits are a 7B model in under 15 s
and a 70B in under 2 minutes on 2 CPU cores.

Each trace runs the way the API runs it, in a fresh `python -m memtrace` process, one at a
time: the wall time of that process (what a user waits for on a cache miss), the trace alone
(two training steps on the meta device, as the process reports it), and, measured in the same
run as the baseline, a process that only imports torch, transformers and peft.

    python -m bench trace_speed [--models 7b,8b,70b] [--variants lora,dora,...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench._common import write_results

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "7b": "meta-llama/Llama-2-7b-hf",
    "8b": "meta-llama/Meta-Llama-3-8B",
    "70b": "meta-llama/Llama-2-70b-hf",
}
VARIANTS = ("lora", "loraplus", "dora", "qlora", "qlora+loraplus", "qlora+dora")
LIMITS_S = {"7b": 15.0, "8b": 15.0, "70b": 120.0}


def _wall(command: list[str], stdin: str | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        command, input=stdin, capture_output=True, text=True, check=True, cwd=ROOT
    )
    return time.perf_counter() - started, done.stdout


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m bench trace_speed")
    parser.add_argument("--models", default="7b,8b,70b")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seq-len", type=int, default=2048)
    args = parser.parse_args(argv)

    from advisor.catalog.models import find_model

    imports = [
        _wall([sys.executable, "-c", "import torch, transformers, peft"])[0] for _ in range(3)
    ]
    baseline = statistics.median(imports)
    rows = []
    for size in args.models.split(","):
        config = find_model(MODELS[size]).config
        for name in args.variants.split(","):
            variant, *combine = name.split("+")
            request = {
                "config": config,
                "training": {"seq_len": args.seq_len},
                "variant": variant,
                "combine_with": combine,
            }
            wall, out = _wall([sys.executable, "-m", "memtrace"], stdin=json.dumps(request))
            trace = json.loads(out.strip().splitlines()[-1])["trace"]
            rows.append(
                {
                    "model": MODELS[size],
                    "variant": name,
                    "process_s": round(wall, 2),
                    "trace_s": trace["seconds"],
                    "ops": trace["ops"],
                    "peak_gib": round(trace["peak_bytes"] / 2**30, 2),
                    "limit_s": LIMITS_S[size],
                    "process_to_import": round(wall / baseline, 2),
                }
            )
            print(
                f"{MODELS[size]:>28} {name:>15}: process {wall:6.1f} s, trace "
                f"{trace['seconds']:6.1f} s ({wall / baseline:.1f}x the bare import)",
                flush=True,
            )
    figures = {
        "seq_len": args.seq_len,
        "import_torch_transformers_peft_s": round(baseline, 2),
        "within_limits": all(r["process_s"] < r["limit_s"] for r in rows),
        "traces": rows,
    }
    path = write_results("trace_speed", figures)
    print(f"bare import {baseline:.1f} s; every trace within its limit: {figures['within_limits']}")
    print(f"written to {path}")
    return figures


if __name__ == "__main__":
    main()
