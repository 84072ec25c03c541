"""Training throughput through the whole service against a bare script, and
submit-to-running latency with an idle worker.

Throughput: the same tiny Llama, data, peft config and Trainer settings, trained
once as a job (REST -> broker -> worker -> store) and once by bench/bare_train.py,
in one run; reported as tokens/s and their ratio (goal: at least 0.95).
Latency: short jobs submitted one at a time to an idle worker; the time from the
job's creation to its start, from the job store's timestamps (p50, p95).

    python -m bench training [--steps 300] [--rounds 5] [--latency-jobs 20]
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

    service = Service.create(work / "service", models)
    service.start_api()
    service.start_worker()
    bare_rates: list[float] = []
    service_rates: list[float] = []
    try:
        file_id = service.upload(train)["id"]
        # Alternate the two, so a burst of load elsewhere on the machine hits both.
        for _ in range(args.rounds):
            bare_rates.append(bare_run())
            job = service.submit(
                {
                    "model": str(model),
                    "training_file": file_id,
                    "variant": "lora",
                    "hyperparameters": hp,
                }
            )
            done = service.wait(job["id"], timeout=1800)
            assert done["status"] == "succeeded", service.log_tail()
            service_rates.append(float(done["tokens_per_second"]))

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
        "goal_ratio": 0.95,
        "submit_to_running_p50_s": round(statistics.median(latencies), 3),
        "submit_to_running_p95_s": round(p95, 3),
        "latency_jobs": len(latencies),
        "rounds": args.rounds,
        "service_runs_tokens_per_s": [round(r, 1) for r in service_rates],
        "bare_runs_tokens_per_s": [round(r, 1) for r in bare_rates],
        "steps": args.steps,
    }
    path = write_results("training", figures)
    for key, value in figures.items():
        print(f"{key:>26}: {value}")
    print(f"written to {path}")
    return figures


if __name__ == "__main__":
    main()
