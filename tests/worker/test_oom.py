"""Out of memory is recovered, not fatal (worker/oom.py): real runs of the tiny model through
`execute_job` against a real SQLite store, where a training step raises torch's real
`OutOfMemoryError` while the plan does not "fit" (worker/faults.py, LORACLE_FAULT_OOM_*).

What is checked: the retries and their `oom_retry` events (the measured peak, the change, the
checkpoint step resumed from), the final hyperparameters in the store and through the API's
view of the job, one adapter, the failed try's model released before the next loads, a job
that never fits failing `out_of_memory` after exactly 1 + LORACLE_OOM_RETRIES tries with the
remedies left, and QLoRA tried only when the job allows a change of variant."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from api.jobs.service import job_out
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.db import session
from loracle.store.models import JobRow
from tests.utils.builders import add_stored_file
from worker import modeling
from worker.oom import variant_change_allowed
from worker.service import execute_job

# Six steps of micro batch 4 on the tiny model, a checkpoint every 2 steps: the fault raises
# as step 3 begins (LORACLE_FAULT_OOM_AT_STEP=2), so checkpoint-2 is there to resume from.
HYPERPARAMETERS = {
    "max_steps": 6,
    "micro_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "gradient_checkpointing": False,
    "checkpoint_steps": 2,
    "seq_len": 32,
    "lora_rank": 8,
    "lora_dropout": 0.0,
    "learning_rate": 1e-2,
    "seed": 0,
}


@pytest.fixture
def settings(tmp_path: Path, model_root: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", model_roots=str(model_root), auth_disabled=True)


@pytest.fixture(autouse=True)
def _no_faults_but_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "LORACLE_FAULT_OOM_ABOVE_MICRO_BATCH",
        "LORACLE_FAULT_OOM_WITHOUT_CHECKPOINTING",
        "LORACLE_FAULT_OOM_16BIT_BASE",
        "LORACLE_FAULT_OOM_AT_STEP",
        "LORACLE_OOM_RETRIES",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def loaded_models(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each model a try loads, as a weak reference, with whether every earlier try's model
    was already freed when it loaded (after a garbage collection)."""
    loads: list[dict[str, Any]] = []
    real = modeling.load_model_and_tokenizer

    def load(plan, device):
        gc.collect()
        earlier_freed = all(entry["ref"]() is None for entry in loads)
        model, tokenizer = real(plan, device)
        loads.append({"ref": weakref.ref(model), "earlier_freed": earlier_freed})
        return model, tokenizer

    monkeypatch.setattr(modeling, "load_model_and_tokenizer", load)
    return loads


def add_job(
    settings: Settings,
    tiny_model: Path,
    train_file: Path,
    *,
    variant: str = "lora",
    combine_with: tuple[str, ...] = (),
    requested_variant: str | None = None,
    allow_variant_change: bool = False,
    **hyperparameters: Any,
) -> str:
    """A queued job on the tiny model and a copy of `train_file`, as the API stores one."""
    with session(settings.resolved_database_url) as s:
        file_id = add_stored_file(s, settings, train_file, rows=64)
        job_id = store.new_id("job")
        store.add_job(
            s,
            id=job_id,
            owner=None,
            model=str(tiny_model),
            training_file=file_id,
            variant=variant,
            combine_with=list(combine_with),
            requested_variant=requested_variant or variant,
            hyperparameters={**HYPERPARAMETERS, **hyperparameters},
            method={"type": "supervised", "allow_variant_change": allow_variant_change},
        )
    return job_id


def job_row(settings: Settings, job_id: str) -> JobRow:
    with session(settings.resolved_database_url) as s:
        row = store.get_job(s, job_id, any_owner=True)
        assert row is not None
        s.expunge(row)
        return row


def events(settings: Settings, job_id: str, type: str) -> list[dict[str, Any]]:
    with session(settings.resolved_database_url) as s:
        rows, _ = store.list_events(s, job_id, limit=1000, after=None)
        found = [e for e in rows if e.type == type]
        return [{**e.data, "_message": e.message, "_level": e.level} for e in found]


def adapters(settings: Settings, job_id: str) -> list[Path]:
    """Every adapter file of the job outside its checkpoints."""
    root = Path(settings.data_dir) / "jobs" / job_id
    return [
        p.relative_to(root)
        for p in root.rglob("adapter_model.safetensors")
        if "checkpoints" not in p.relative_to(root).parts
    ]


def test_checkpointing_then_a_smaller_micro_batch_make_it_fit_resuming_each_time(
    settings, tiny_model, train_file, monkeypatch, loaded_models
):
    monkeypatch.setenv("LORACLE_FAULT_OOM_ABOVE_MICRO_BATCH", "2")
    monkeypatch.setenv("LORACLE_FAULT_OOM_AT_STEP", "2")
    job_id = add_job(settings, tiny_model, train_file)

    assert execute_job(job_id, settings) == "succeeded"

    retries = events(settings, job_id, "oom_retry")
    assert [r["retry"] for r in retries] == [1, 2]
    assert [r["retries"] for r in retries] == [2, 2]
    # Remedy 1, then remedy 2 (checkpointing alone was not enough: micro batch 4 > 2).
    assert retries[0]["change"] == {"gradient_checkpointing": [False, True]}
    assert retries[1]["change"] == {
        "micro_batch_size": [4, 2],
        "gradient_accumulation_steps": [1, 2],
    }
    for retry in retries:
        # Both tries ran out of memory as step 3 began, with checkpoint-2 on disk.
        assert retry["step"] == 2
        assert retry["resumed_from_step"] == 2
        assert retry["peak"]["device"] == "cpu"
        assert retry["rss_growth_gib"] is not None and retry["rss_growth_gib"] >= 0
        assert "CUDA out of memory" in retry["error"]
        assert retry["_level"] == "warning"
        assert retry["_message"].startswith("out of memory in step 3 (the process grew by ")
        assert "resuming from step 2" in retry["_message"]
    assert "retry 2 of 2 with micro_batch_size 4 -> 2" in retries[1]["_message"]
    # Each retry resumed from that checkpoint, and the last one trained to the end.
    assert [r["step"] for r in events(settings, job_id, "resumed")] == [2, 2]
    assert len(events(settings, job_id, "started")) == 3
    metrics = [m["step"] for m in events(settings, job_id, "metrics") if "loss" in m]
    assert metrics == [1, 2, 3, 4, 5, 6]

    row = job_row(settings, job_id)
    assert (row.status, row.step, row.attempts, row.error_type) == ("succeeded", 6, 1, None)
    plan = row.plan or {}
    assert plan["gradient_checkpointing"] is True
    assert (plan["micro_batch_size"], plan["gradient_accumulation_steps"]) == (2, 2)
    shown = job_out(row)
    assert shown.hyperparameters["gradient_checkpointing"] is True
    assert shown.hyperparameters["micro_batch_size"] == 2
    assert shown.hyperparameters["gradient_accumulation_steps"] == 2
    assert shown.hyperparameters["batch_size"] == 4  # the effective batch, unchanged
    assert shown.allow_variant_change is False and shown.variant == "lora"

    # One adapter, and its record names what the last try ran.
    assert adapters(settings, job_id) == [Path("adapter/adapter_model.safetensors")]
    record = json.loads(
        (Path(settings.data_dir) / "jobs" / job_id / "adapter" / "plan.json").read_text()
    )
    assert record["plan"]["micro_batch_size"] == 2 and record["plan"]["gradient_checkpointing"]

    # Every try's model was freed before the next one loaded.
    assert len(loaded_models) == 3
    assert all(entry["earlier_freed"] for entry in loaded_models)


def test_checkpointing_alone_is_enough_when_that_is_what_was_missing(
    settings, tiny_model, train_file, monkeypatch
):
    monkeypatch.setenv("LORACLE_FAULT_OOM_WITHOUT_CHECKPOINTING", "1")
    monkeypatch.setenv("LORACLE_FAULT_OOM_AT_STEP", "2")
    job_id = add_job(settings, tiny_model, train_file, max_steps=4)

    assert execute_job(job_id, settings) == "succeeded"

    retries = events(settings, job_id, "oom_retry")
    assert [r["change"] for r in retries] == [{"gradient_checkpointing": [False, True]}]
    assert retries[0]["resumed_from_step"] == 2
    plan = job_row(settings, job_id).plan or {}
    assert (plan["gradient_checkpointing"], plan["micro_batch_size"]) == (True, 4)
    assert adapters(settings, job_id) == [Path("adapter/adapter_model.safetensors")]


@pytest.mark.parametrize("retries", [None, "1"], ids=["default-2", "env-1"])
def test_a_job_that_never_fits_fails_out_of_memory_after_every_retry(
    settings, tiny_model, train_file, monkeypatch, retries, tmp_path, model_root
):
    if retries is not None:
        monkeypatch.setenv("LORACLE_OOM_RETRIES", retries)
        settings = Settings(
            data_dir=tmp_path / "data", model_roots=str(model_root), auth_disabled=True
        )
    expected_retries = settings.oom_retries
    assert expected_retries == (2 if retries is None else 1)
    monkeypatch.setenv("LORACLE_FAULT_OOM_ABOVE_MICRO_BATCH", "0")  # no micro batch fits
    monkeypatch.setenv("LORACLE_FAULT_OOM_AT_STEP", "1")
    job_id = add_job(settings, tiny_model, train_file, checkpoint_steps=1, max_steps=3)

    assert execute_job(job_id, settings) == "failed"

    tries = 1 + expected_retries
    assert len(events(settings, job_id, "started")) == tries
    assert len(events(settings, job_id, "oom_retry")) == expected_retries
    row = job_row(settings, job_id)
    assert row.error_type == "out_of_memory"
    message = row.error_message or ""
    assert message.startswith(f"out of memory in step 2 on try {tries} of {tries} ("), message
    assert "tried: turn on gradient checkpointing" in message
    # What is left: a smaller micro batch still, and QLoRA, which this job does not allow.
    assert "Remedies left that keep the batch: micro_batch_size " in message
    assert "allow_variant_change: true" in message
    assert "LORACLE_OOM_RETRIES" in message
    [failed] = events(settings, job_id, "out_of_memory")
    assert failed["attempts"] == tries and failed["rss_growth_gib"] is not None
    left = failed["remedies_left"]
    assert [(r["settings"].get("micro_batch_size"), r["allowed"]) for r in left] == [
        (1 if retries is None else 2, True),
        (None, False),
    ]
    assert left[-1]["settings"] == {"variant": "qlora", "combine_with": []}
    # Its measured peak is the job's, and the API's error code is out_of_memory.
    assert (row.measured_peak or {}).get("rss_growth_bytes") is not None
    shown = job_out(row)
    assert shown.error is not None and shown.error.code == "out_of_memory"
    assert adapters(settings, job_id) == []


def test_a_named_variant_is_not_changed_to_qlora_without_allow_variant_change(
    settings, tiny_model, train_file, monkeypatch
):
    # Micro batch 1 and checkpointing on: QLoRA is the only remedy left, and not allowed.
    monkeypatch.setenv("LORACLE_FAULT_OOM_16BIT_BASE", "1")
    monkeypatch.setenv("LORACLE_FAULT_OOM_AT_STEP", "2")
    job_id = add_job(
        settings,
        tiny_model,
        train_file,
        micro_batch_size=1,
        gradient_checkpointing=True,
        max_steps=4,
    )

    assert execute_job(job_id, settings) == "failed"

    assert events(settings, job_id, "oom_retry") == []
    assert len(events(settings, job_id, "started")) == 1
    row = job_row(settings, job_id)
    assert (row.error_type, row.variant) == ("out_of_memory", "lora")
    assert "No remedy that keeps the batch is left (not tried: QLoRA instead of LoRA" in (
        row.error_message or ""
    )
    assert "allow_variant_change: true" in (row.error_message or "")


def test_allow_variant_change_retries_as_qlora_keeping_dora_and_resuming(
    settings, tiny_model, train_file, monkeypatch, loaded_models
):
    monkeypatch.setenv("LORACLE_FAULT_OOM_16BIT_BASE", "1")
    monkeypatch.setenv("LORACLE_FAULT_OOM_AT_STEP", "2")
    job_id = add_job(
        settings,
        tiny_model,
        train_file,
        variant="dora",
        allow_variant_change=True,
        micro_batch_size=1,
        gradient_checkpointing=True,
        max_steps=4,
    )

    assert execute_job(job_id, settings) == "succeeded"

    [retry] = events(settings, job_id, "oom_retry")
    assert retry["kind"] == "quantize_base"
    assert retry["change"]["variant"] == ["dora", "qlora"]
    assert retry["change"]["combine_with"] == [[], ["dora"]]
    # The optimizer the run started with stays: the checkpoint's state resumes into it.
    assert retry["change"]["optimizer"] == [None, "adamw"]
    assert retry["resumed_from_step"] == 2
    assert [r["step"] for r in events(settings, job_id, "resumed")] == [2]
    started = events(settings, job_id, "started")
    assert [(s["variant"], s["combine_with"]) for s in started] == [
        ("dora", []),
        ("qlora", ["dora"]),
    ]
    assert "bitsandbytes.Linear4bit" in started[-1]["base_layers"]
    row = job_row(settings, job_id)
    assert (row.status, row.step) == ("succeeded", 4)
    assert (row.variant, row.combine_with) == ("qlora", ["dora"])
    shown = job_out(row)
    assert (shown.variant, shown.combine_with, shown.requested_variant) == (
        "qlora",
        ["dora"],
        "dora",
    )
    assert shown.allow_variant_change is True
    assert adapters(settings, job_id) == [Path("adapter/adapter_model.safetensors")]
    assert all(entry["earlier_freed"] for entry in loaded_models)


def test_a_job_whose_variant_the_advisor_chose_retries_as_qlora_without_asking(
    settings, tiny_model, train_file, monkeypatch
):
    monkeypatch.setenv("LORACLE_FAULT_OOM_16BIT_BASE", "1")
    monkeypatch.setenv("LORACLE_FAULT_OOM_AT_STEP", "2")
    job_id = add_job(
        settings,
        tiny_model,
        train_file,
        requested_variant="auto",  # the advisor chose LoRA
        micro_batch_size=1,
        gradient_checkpointing=True,
        max_steps=4,
    )

    assert execute_job(job_id, settings) == "succeeded"

    [retry] = events(settings, job_id, "oom_retry")
    assert retry["change"]["variant"] == ["lora", "qlora"]
    assert "combine_with" not in retry["change"]
    row = job_row(settings, job_id)
    assert (row.status, row.variant, row.combine_with) == ("succeeded", "qlora", [])
    assert (row.plan or {})["variant"] == "qlora"


def test_variant_change_is_allowed_for_auto_or_when_the_job_asks():
    def job(requested: str, method: dict | None) -> SimpleNamespace:
        return SimpleNamespace(requested_variant=requested, method=method)

    assert variant_change_allowed(job("auto", None))
    assert variant_change_allowed(job("auto", {"allow_variant_change": False}))
    assert variant_change_allowed(job("lora", {"allow_variant_change": True}))
    assert not variant_change_allowed(job("lora", {"allow_variant_change": False}))
    assert not variant_change_allowed(job("dora", {}))
    assert not variant_change_allowed(job("dora", None))
