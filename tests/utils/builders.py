"""Builders for test data: a tiny random-init Llama with an offline tokenizer, and JSONL files.

Everything here is built locally in well under a second: no network, no downloaded weights.
The model is random, so what it "knows" comes only from the data: `write_jsonl` writes a
learnable pattern (a fixed cycle of words, so each word predicts the next) on which the
training loss of a LoRA adapter falls within 20-40 optimizer steps.

Tests build these once per session through fixtures (see `tests/worker/conftest.py`); the
functions are plain so that other test packages can build their own copies. `plan_dict`
gives a 30-step plan for the tiny model, and `RecordingHooks` records a run's events and
progress (and can cancel it after a given step) for tests of code that drives training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

# The tiny model, its tokenizer and the cycle task are the product's own (`loracle demo`
# builds the same model): one builder for the demo and the tests.
from cli.demo import (
    CYCLE_WORDS,
    build_tiny_llama,  # noqa: F401 (the test suite's builder)
    build_tokenizer,  # noqa: F401
    prompt_completion,
    walk,
)
from worker.training import TrainingHooks

DataFormat = Literal["text", "prompt_completion", "messages"]


def make_rows(fmt: DataFormat, n_rows: int, seed: int = 0) -> list[dict]:
    """The rows `write_jsonl` writes, for tests that want them in memory."""
    rng = random.Random(seed)
    rows: list[dict] = []
    for _ in range(n_rows):
        start = rng.randrange(len(CYCLE_WORDS))
        if fmt == "text":
            rows.append({"text": walk(start, 10)})
        elif fmt == "prompt_completion":
            rows.append(prompt_completion(start))
        elif fmt == "messages":
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": "you are a helpful model."},
                        {"role": "user", "content": walk(start, 2)},
                        {"role": "assistant", "content": walk(start + 2, 4)},
                        {"role": "user", "content": walk(start + 6, 1)},
                        {"role": "assistant", "content": walk(start + 7, 3)},
                    ]
                }
            )
        else:
            raise ValueError(f"fmt={fmt!r}: use 'text', 'prompt_completion' or 'messages'")
    return rows


def write_jsonl(path: Path | str, fmt: DataFormat, n_rows: int, seed: int = 0) -> Path:
    """Write `n_rows` learnable rows in format `fmt` to `path` (one JSON object per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in make_rows(fmt, n_rows, seed):
            fh.write(json.dumps(row) + "\n")
    return path


FIXED_COMPLETION = " alpha bravo"


def write_fixed_completion_jsonl(path: Path | str, n_rows: int, seed: int = 0) -> Path:
    """`n_rows` prompt/completion rows whose prompts vary (two words of the cycle) and whose
    completion is always `FIXED_COMPLETION`: a task a LoRA adapter on the tiny model learns
    within 30 steps to answer exactly (greedy), where its random base never does."""
    rng = random.Random(seed)
    rows = [
        {
            "prompt": f"continue the sequence from {walk(rng.randrange(len(CYCLE_WORDS)), 2)}:",
            "completion": FIXED_COMPLETION,
        }
        for _ in range(n_rows)
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def plan_dict(model_dir: Path | str, train_file: Path | str, output_dir: Path | str, **overrides):
    """A small, fast training plan (as a dict) for the tiny model: 30 steps of seq_len 32.

    The learning rate is far above a real run's so a random-init model visibly learns the
    cycle pattern in 30 steps on CPU. Override any field by keyword.
    """
    plan = {
        "model": str(model_dir),
        "train_file": str(train_file),
        "output_dir": str(output_dir),
        "max_steps": 30,
        "learning_rate": 1e-2,
        "micro_batch_size": 4,
        "seq_len": 32,
        "lora_rank": 8,
        "lora_dropout": 0.0,
        "seed": 0,
    }
    plan.update(overrides)
    return plan


class RecordingHooks(TrainingHooks):
    """Keeps every event and progress report; stops once `stop_after` steps were reported."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.progress: list[dict[str, Any]] = []
        self.stop_after = stop_after

    def on_event(self, type: str, data: dict[str, Any]) -> None:
        self.events.append((type, data))

    def on_progress(self, step, total_steps, loss, learning_rate, tokens_per_second, eta_seconds):
        self.progress.append(
            {
                "step": step,
                "total_steps": total_steps,
                "loss": loss,
                "learning_rate": learning_rate,
                "tokens_per_second": tokens_per_second,
                "eta_seconds": eta_seconds,
            }
        )

    def should_stop(self, step_end: bool = False) -> bool:
        return self.stop_after is not None and any(
            p["step"] >= self.stop_after for p in self.progress
        )

    def of_type(self, type: str) -> list[dict[str, Any]]:
        return [data for kind, data in self.events if kind == type]


def add_placeholder_file(s: Any, owner: str | None = None) -> str:
    """A file row in the job store for tests that need a job but never read its data;
    returns its id. ``s`` is an open store session."""
    from loracle.store import jobs as store

    file_id = store.new_id("file")
    store.add_file(
        s,
        id=file_id,
        owner=owner,
        filename="t.jsonl",
        purpose="fine-tune",
        bytes=1,
        rows=1,
        format="text",
        sha256="0" * 64,
        path="/dev/null",
    )
    return file_id


def add_stored_file(s: Any, settings: Any, source: Path, rows: int) -> str:
    """A copy of `source` stored as the API stores an upload (under the data directory, with
    its file row), for tests whose worker reads the data; returns its id. ``s`` is an open
    store session."""
    from loracle.store import jobs as store
    from worker.service import file_path

    file_id = store.new_id("file")
    path = file_path(settings, file_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(source.read_bytes())
    store.add_file(
        s,
        id=file_id,
        owner=None,
        filename="train.jsonl",
        purpose="fine-tune",
        bytes=path.stat().st_size,
        rows=rows,
        format="text",
        sha256="0" * 64,
        path=str(path),
    )
    return file_id


def jsonl_bytes(*rows: object) -> bytes:
    """A JSONL file's bytes: dict rows as JSON, string rows as written (for broken lines)."""
    return b"".join((r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in rows)


def bare_plan(variant: str = "lora", combine_with=(), **overrides):
    """A validated plan with placeholder paths, for tests that never load its files."""
    from loracle.plan import load_plan

    return load_plan(
        {
            "model": "org/name",
            "train_file": "t.jsonl",
            "output_dir": "out",
            "variant": variant,
            "combine_with": list(combine_with),
            **overrides,
        }
    )


# The combinations the model-building tests load for real: each variant alone and the
# design document's two combinations. Config-only tests run over `combinations()`.
LOADED_COMBINATIONS = [
    ("lora", []),
    ("qlora", []),
    ("dora", []),
    ("loraplus", []),
    ("rslora", []),
    ("qlora", ["loraplus"]),
    ("qlora", ["dora"]),
]


def add_measured_job(
    s: Any,
    card_name: str,
    card_gib: float,
    estimate_gib: float,
    reserved_gib: float,
    variant: str = "lora",
    combine_with: tuple[str, ...] = (),
    architecture: str = "llama 32x4096",
) -> str:
    """A succeeded job in the store as a worker on a CUDA card leaves one: the estimate it was
    submitted with and the measurement record the worker writes (worker.memory_monitor),
    here with chosen figures (no GPU runs the tests). Returns its id."""
    from loracle.store import jobs as store
    from worker.memory_monitor import PeakMemory

    gib = 1 << 30
    measured = PeakMemory(
        device="cuda:0",
        device_name=card_name,
        device_total_bytes=int(card_gib * gib),
        precision="bf16",
        libraries={"torch": "2.13.0"},
        measures="torch.cuda.max_memory_allocated / max_memory_reserved since run start",
        allocated_bytes=int(reserved_gib * 0.8 * gib),
        reserved_bytes=int(reserved_gib * gib),
    )
    job_id = store.new_id("job")
    store.add_job(
        s,
        id=job_id,
        owner=None,
        model="meta-llama/Llama-2-7b-hf",
        training_file=add_placeholder_file(s),
        variant=variant,
        combine_with=list(combine_with),
        requested_variant=variant,
        hyperparameters={},
        estimate={"total_gib": estimate_gib, "architecture": architecture},
    )
    # Through the worker's own transitions: take the lease, finish with the measurement.
    token = store.acquire(s, job_id, "gpu-host:1", 60, 3)
    assert token is not None
    status = store.finish(
        s, job_id, token, store.SUCCEEDED, measured_peak=measured.model_dump(mode="json")
    )
    assert status == store.SUCCEEDED
    return job_id


def add_running_job(
    url: str, training_file: str, owner: str | None, ttl_s: float = 600, max_attempts: int = 3
) -> tuple[str, int]:
    """A job of `owner` on `training_file`, taken by a test 'worker': (job id, fencing token).
    It is on no queue, so no dispatcher sends it anywhere."""
    from loracle.store import jobs as store
    from loracle.store.db import session

    job_id = store.new_id("job")
    with session(url) as s:
        store.add_job(
            s,
            id=job_id,
            owner=owner,
            model="m",
            training_file=training_file,
            variant="lora",
            requested_variant="lora",
            hyperparameters={},
        )
    with session(url) as s:
        token = store.acquire(s, job_id, "test-worker:1", ttl_s, max_attempts)
    assert token is not None
    return job_id, token


def sealed_checkpoint(directory: Path, step: int, payload: bytes = b"weights") -> Path:
    """A checkpoint directory as the Trainer leaves it, sealed with its completion marker
    (worker/checkpoints.py), holding `payload` as its adapter."""
    from worker.checkpoints import CHECKPOINT_FILES, seal_checkpoint

    directory.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        (directory / name).write_bytes(payload if name.endswith(".safetensors") else b"{}")
    (directory / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    seal_checkpoint(directory, step)
    return directory
