"""A fleet of CPU workers of two card classes under 200 jobs of mixed needs.

Three `loracle worker --memory-gib` processes: two of a small budget and one of a large one,
chosen from the advisor's own estimates of the two kinds of job, so that the small jobs fit
both classes and the large ones only the large class. Jobs of both kinds are submitted at once
(two small for each large), through the REST API, to the embedded broker. The run checks what
placement promises, from the job store and each job's events:

- every job succeeds, and none trains twice (one `running` status event, one attempt);
- every job arrives at a worker of the class it was placed on, whose budget holds the job's
  estimate (the `arrived` event names the worker, its class and what it had free).

Then it reports the placement latency (submit to running, one job at a time on an idle
fitting worker: p50 and p95) and the throughput (jobs per minute over the batch), and what
one job costs a worker: each job runs in a fresh pool process (worker_max_tasks_per_child=1).

    python -m bench fleet [--jobs 200] [--latency-jobs 10] [--steps 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench._common import write_results


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _needs_gib(model_dir: Path, hp: dict[str, Any]) -> float:
    """What a card must have for a LoRA job of `hp` on `model_dir` as the API places it: the
    advisor's estimate and its fit margin."""
    import json

    from advisor.architecture import from_hf_config
    from advisor.memory import estimate
    from advisor.profile import TrainingSettings
    from advisor.variants import combination

    arch = from_hf_config(json.loads((model_dir / "config.json").read_text()))
    training = TrainingSettings(
        seq_len=hp["seq_len"],
        micro_batch_size=hp["micro_batch_size"],
        gradient_checkpointing=False,
    )
    e = estimate(arch, training, combination("lora"))
    return e.total_gib * (1 + e.margin.fraction)


def _submit_to_running_s(service: Any, job_id: str) -> float:
    """Submit to running, from the store's own timestamps: the API answers whole seconds
    (OpenAI's `created_at`/`started_at`), too coarse for a latency of a fraction of one."""
    from loracle.settings import Settings
    from loracle.store import jobs as store
    from loracle.store.db import session

    url = Settings(data_dir=service.data_dir).resolved_database_url
    with session(url) as s:
        row = store.get_job(s, job_id, any_owner=True)
        assert row is not None and row.started_at is not None, job_id
        return (row.started_at - row.created_at).total_seconds()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench fleet")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--latency-jobs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per job")
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from tests.utils.builders import build_tiny_llama, write_jsonl
    from tests.utils.service import Service

    work = Path(tempfile.mkdtemp(prefix="loracle-fleet-"))
    models = work / "models"
    model = build_tiny_llama(models / "fleet-llama")
    data = write_jsonl(work / "train.jsonl", "text", n_rows=64, seed=0)
    small_hp = {"max_steps": args.steps, "seq_len": 32, "micro_batch_size": 1}
    large_hp = {"max_steps": args.steps, "seq_len": 512, "micro_batch_size": 16}
    small, large = _needs_gib(model, small_hp), _needs_gib(model, large_hp)
    assert large > small, (small, large)
    budgets = {"small": round((small + large) / 2, 4), "large": round(large * 1.5, 4)}

    service = Service.create(work / "service", models, LORACLE_DISPATCH_INTERVAL_S="1")
    service.start_api()
    for budget in (budgets["small"], budgets["small"], budgets["large"]):
        service.start_worker("--memory-gib", str(budget))
    try:
        with service.client() as c:
            deadline = time.monotonic() + 120
            while len(c.get("/v1/workers").json()["data"]) < 3:
                assert time.monotonic() < deadline, service.log_tail()
                time.sleep(0.5)
            file_id = service.upload(data, c)["id"]

            def submit(hp: dict[str, Any]) -> dict[str, Any]:
                return service.submit(
                    {
                        "model": str(model),
                        "training_file": file_id,
                        "variant": "lora",
                        "hyperparameters": {**hp, "gradient_checkpointing": False},
                    },
                    c,
                )

            # Latency: one small job at a time, each to an idle fitting worker.
            latencies = []
            for _ in range(args.latency_jobs):
                job = submit(small_hp)
                done = service.wait(job["id"], timeout=300, client=c)
                assert done["status"] == "succeeded", service.log_tail()
                latencies.append(_submit_to_running_s(service, job["id"]))

            # Throughput: the whole batch at once.
            started = time.monotonic()
            batch = [submit(large_hp if i % 3 == 2 else small_hp) for i in range(args.jobs)]
            finished = {}
            while len(finished) < len(batch):
                assert time.monotonic() - started < args.timeout_s, service.log_tail()
                for job in batch:
                    if job["id"] not in finished:
                        now = service.job(job["id"], c)
                        if now["status"] in ("succeeded", "failed", "cancelled"):
                            finished[job["id"]] = now
                time.sleep(1)
            elapsed = time.monotonic() - started
            checks = _check(service, c, batch, finished, budgets)
    finally:
        service.stop()

    figures = {
        "jobs": args.jobs,
        "workers": {"small_budget_gib": budgets["small"], "large_budget_gib": budgets["large"]},
        "job_needs_gib": {"small": round(small, 4), "large": round(large, 4)},
        "placement_latency_p50_s": round(statistics.median(latencies), 3),
        "placement_latency_p95_s": round(_percentile(latencies, 0.95), 3),
        "throughput_jobs_per_min": round(len(batch) / elapsed * 60, 2),
        "batch_seconds": round(elapsed, 1),
        **checks,
    }
    path = write_results("fleet", figures, args.out)
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    print(f"written to {path}")
    bad = (
        figures["failed"]
        or figures["ran_twice"]
        or figures["over_budget"]
        or figures["arrived_at_another_class"]
    )
    if bad:
        raise SystemExit(f"placement broke its promise: {checks}")
    return figures


def _check(service, client, batch, finished, budgets) -> dict[str, Any]:
    """What placement promised, job by job, from the store's answers and events."""
    failed = [j for j, done in finished.items() if done["status"] != "succeeded"]
    ran_twice, over_budget, wrong_class = [], [], []
    per_class: Counter[str] = Counter()
    for job in batch:
        events = service.events(job["id"], client)
        running = [e for e in events if e["type"] == "status" and e["data"]["status"] == "running"]
        if len(running) != 1 or finished[job["id"]]["attempts"] != 1:
            ran_twice.append(job["id"])
        (arrived,) = [e for e in events if e["type"] == "arrived"] or [None]
        if arrived is None:
            continue
        placed = finished[job["id"]]["placement"]
        got = arrived["data"]
        per_class[got["card_class"]] += 1
        if got["card_class"] != placed["card_class"]:
            wrong_class.append(job["id"])
        budget = placed["card_gib"]
        if placed["estimate_gib"] is None or placed["estimate_gib"] > budget:
            over_budget.append(job["id"])
    return {
        "failed": len(failed),
        "ran_twice": len(ran_twice),
        "over_budget": len(over_budget),
        "arrived_at_another_class": len(wrong_class),
        "jobs_per_class": dict(per_class),
    }


if __name__ == "__main__":
    main()
