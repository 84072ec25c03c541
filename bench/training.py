"""Training throughput through the whole service against a bare script, and
submit-to-running latency with an idle worker.

Throughput: the same tiny Llama, data, peft config and Trainer settings, trained
once as a job (REST -> broker -> worker -> store) and once by bench/bare_train.py,
in one run; reported as tokens/s and their ratio (goal: at least 0.95).
The service runs as deployed (default settings) and the client polls the running job
every 2 s, as the README's loop does. How often it polls matters on a machine whose
every core trains, as here: each answer takes a core from the training for a moment,
and the other training thread waits for it at its next barrier. Measured on this
2-core machine: polling every 0.3 s cost 12% of the throughput, every 3 s nothing
measurable (`--poll-s` to see it).
Latency: short jobs submitted one at a time to an idle worker; the time from the
job's creation to its start, from the job store's timestamps (p50, p95).

    python -m bench training [--steps 300] [--rounds 5] [--poll-s 2] [--latency-jobs 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._common import write_results


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m bench training")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="alternating runs of each")
    parser.add_argument(
        "--poll-s",
        type=float,
        default=2.0,
        help="how often the client asks for the job's status while it trains (the README's "
        "loop sleeps 2 s); on a machine whose every core trains, each answer takes a core "
        "from the training for a moment",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="write the results here, not bench/results/"
    )
    args = parser.parse_args(argv)

    from sqlalchemy import select

    from loracle.store.db import session
    from loracle.store.models import JobRow
    from tests.utils.builders import build_tiny_llama, write_jsonl
    from tests.utils.service import Service

    work = Path(tempfile.mkdtemp(prefix="loracle-bench-"))
    models = work / "models"
    model = build_tiny_llama(
        models / "bench-llama", hidden_size=256, intermediate_size=512, num_hidden_layers=4
    )
    train = write_jsonl(work / "train.jsonl", "text", n_rows=512, seed=0)
    hp = {
        "max_steps": args.steps,
        "seq_len": 128,
        "micro_batch_size": 4,
        "lora_rank": 16,
        "learning_rate": 1e-3,
        "logging_steps": 1,
    }

    plan = {
        "model": str(model),
        "train_file": str(train),
        "output_dir": str(work / "bare"),
        "variant": "lora",
        **hp,
    }
    (work / "plan.json").write_text(json.dumps(plan))

    def bare_run() -> float:
        out = (
            subprocess.run(
                [sys.executable, "-m", "bench.bare_train", str(work / "plan.json")],
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        return float(json.loads(out)["tokens_per_second"])

    # The service as deployed: the default dispatch interval (the tests' helper sets 1 s),
    # and a client that polls the job as the README's does, every --poll-s seconds.
    service = Service.create(work / "service", models, LORACLE_DISPATCH_INTERVAL_S="5")
    service.start_api()
    service.start_worker()
    bare_rates: list[float] = []
    service_rates: list[float] = []
    try:
        file_id = service.upload(train)["id"]

        def service_run() -> float:
            job = service.submit(
                {
                    "model": str(model),
                    "training_file": file_id,
                    "variant": "lora",
                    "hyperparameters": hp,
                }
            )
            done = service.wait(job["id"], timeout=1800, interval=args.poll_s)
            assert done["status"] == "succeeded", service.log_tail()
            return float(done["tokens_per_second"])

        # Alternate the two, and which goes first (bare-service, service-bare, ...): a burst
        # of load elsewhere, or a machine that runs faster after a pause, hits both alike.
        for round_ in range(args.rounds):
            if round_ % 2 == 0:
                bare_rates.append(bare_run())
                service_rates.append(service_run())
            else:
                service_rates.append(service_run())
                bare_rates.append(bare_run())

        latencies = []
        url = f"sqlite:///{service.data_dir / 'loracle.db'}"
        for _ in range(args.latency_jobs):
            quick = service.submit(
                {
                    "model": str(model),
                    "training_file": file_id,
                    "variant": "lora",
                    "hyperparameters": {**hp, "max_steps": 1},
                }
            )
            service.wait(quick["id"], timeout=300)
            with session(url) as s:
                row = s.scalars(select(JobRow).where(JobRow.id == quick["id"])).one()
                assert row.started_at is not None
                latencies.append((row.started_at - row.created_at).total_seconds())
    finally:
        service.stop()

    bare = {"tokens_per_second": statistics.median(bare_rates)}
    through_service = statistics.median(service_rates)
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    figures = {
        "service_tokens_per_s": round(through_service, 1),
        "bare_tokens_per_s": round(bare["tokens_per_second"], 1),
        "ratio_service_to_bare": round(through_service / bare["tokens_per_second"], 3),
        # Each round's service run against the bare run next to it, then their median.
        "ratio_paired_median": round(
            statistics.median(s / b for s, b in zip(service_rates, bare_rates, strict=True)), 3
        ),
        "goal_ratio": 0.95,
        "poll_s": args.poll_s,
        "submit_to_running_p50_s": round(statistics.median(latencies), 3),
        "submit_to_running_p95_s": round(p95, 3),
        "latency_jobs": len(latencies),
        "rounds": args.rounds,
        "service_runs_tokens_per_s": [round(r, 1) for r in service_rates],
        "bare_runs_tokens_per_s": [round(r, 1) for r in bare_rates],
        "steps": args.steps,
    }
    path = write_results("training", figures, args.out)
    for key, value in figures.items():
        print(f"{key:>26}: {value}")
    print(f"written to {path}")
    return figures


if __name__ == "__main__":
    main()
