"""Real training runs on CPU with the tiny model: every variant learns, saves and reloads."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from loracle.plan import load_plan
from loracle.recipe import model_load_kwargs
from tests.utils.builders import RecordingHooks, plan_dict, write_fixed_completion_jsonl
from worker import artifacts, evaluation
from worker.checkpoints import CHECKPOINT_FILES, find_resumable_checkpoint, seal_checkpoint
from worker.training import run_training

# name: (data format, plan fields). LoRA+ multiplies lora_B's rate by 16, so it starts lower.
# The formats rotate so every format is trained end to end; two runs also exercise gradient
# checkpointing (the QLoRA recipe) and an explicit bf16 precision on CPU.
RUNS = {
    "lora": ("text", {"variant": "lora"}),
    "qlora": ("text", {"variant": "qlora"}),
    "dora": ("prompt_completion", {"variant": "dora"}),
    "loraplus": ("text", {"variant": "loraplus", "learning_rate": 2e-3, "precision": "bf16"}),
    "qlora+loraplus": (
        "text",
        {"variant": "qlora", "combine_with": ["loraplus"], "learning_rate": 2e-3},
    ),
    "qlora+dora": (
        "messages",
        {"variant": "qlora", "combine_with": ["dora"], "gradient_checkpointing": True},
    ),
}
ESTIMATE = {"total_gib": 0.01, "source": "test"}


@pytest.fixture(scope="module")
def trained(tiny_model, data_dir, tmp_path_factory):
    """Train each entry of RUNS once per module, on first use; returns (plan, result, hooks)."""
    cache = {}

    def get(name):
        if name not in cache:
            fmt, fields = RUNS[name]
            plan = load_plan(
                plan_dict(
                    tiny_model,
                    data_dir / f"{fmt}.jsonl",
                    tmp_path_factory.mktemp(name),
                    validation_file=str(data_dir / f"{fmt}-validation.jsonl"),
                    estimate=ESTIMATE,
                    **fields,
                )
            )
            hooks = RecordingHooks()
            cache[name] = (plan, run_training(plan, hooks), hooks)
        return cache[name]

    return get


def mean(values):
    return statistics.fmean(values)


def training_batch(tokenizer, path: Path, n: int = 8):
    from worker.data import PadCollator, tokenize_file

    examples = tokenize_file(path, tokenizer, seq_len=32).examples[:n]
    return PadCollator(tokenizer.pad_token_id)(examples)


@pytest.mark.parametrize("name", list(RUNS))
def test_variant_learns_and_its_adapter_reloads(trained, name, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plan, result, hooks = trained(name)
    assert result.status == "succeeded"
    assert result.steps == result.total_steps == 30
    losses = [entry.loss for entry in result.losses]
    assert [entry.step for entry in result.losses] == list(range(1, 31))
    assert mean(losses[-5:]) < mean(losses[:5]) - 0.2, losses
    assert result.final_loss == losses[-1]
    # Held-out rows of the same pattern: the trained adapter beats the untrained start.
    assert result.eval_loss is not None and result.eval_loss < losses[0] - 0.2
    assert 0 < result.trainable_parameters < result.all_parameters

    # A fresh base, built the way the record says, then the saved adapter on top.
    adapter_dir = Path(result.artifacts["adapter_dir"])
    record = load_plan(adapter_dir / artifacts.PLAN_FILE)
    assert record.quantize_4bit is plan.quantize_4bit
    base = AutoModelForCausalLM.from_pretrained(record.model, **model_load_kwargs(record, "cpu"))
    batch = training_batch(tokenizer, plan.train_file)
    with torch.no_grad():
        base_out = base(**batch)
        tuned = PeftModel.from_pretrained(base, adapter_dir)
        tuned_out = tuned(**batch)
    assert (tuned_out.logits - base_out.logits).abs().max() > 1e-2
    # The saved adapter is the trained one: it fits the training data better than the base.
    assert tuned_out.loss < base_out.loss - 0.2

    if plan.quantize_4bit:
        import bitsandbytes as bnb
        from peft.tuners.lora import LoraLayer

        layers = [m for m in tuned.modules() if isinstance(m, LoraLayer)]
        assert layers
        for layer in layers:
            assert isinstance(layer.get_base_layer(), bnb.nn.Linear4bit)
            assert layer.get_base_layer().weight.quant_type == "nf4"

    from safetensors import safe_open

    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert any("lora_A" in k for k in keys) and any("lora_B" in k for k in keys)
    assert any("lora_magnitude_vector" in k for k in keys) is plan.use_dora

    started = hooks.of_type("started")
    assert started[0]["variant"] == plan.variant
    finished = hooks.of_type("finished")[0]
    assert finished["step"] == 30
    # The console's job page draws the validation point from this event.
    assert finished["eval_loss"] == result.eval_loss is not None
    assert [p["step"] for p in hooks.progress] == list(range(1, 31))
    assert all(p["total_steps"] == 30 and p["tokens_per_second"] > 0 for p in hooks.progress)


def test_loraplus_run_logs_lora_a_rate(trained):
    """The Trainer logs the first parameter group's rate: lora_A's, the plan's learning_rate
    (lora_B's 16x is checked on the optimizer itself in test_modeling)."""
    plan, result, _ = trained("loraplus")
    assert plan.use_loraplus and plan.loraplus_lr_ratio == 16.0
    assert result.losses[0].learning_rate == pytest.approx(2e-3)
    assert result.precision == "bf16"  # asked for explicitly; honoured on CPU


def test_run_record_and_artifacts(trained):
    plan, result, _ = trained("lora")
    adapter = Path(result.artifacts["adapter_dir"])
    assert adapter == plan.output_dir.resolve() / "adapter"
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert {artifacts.PLAN_FILE, artifacts.METRICS_FILE, artifacts.LOSS_PLOT} <= names
    # No temporary directories left behind by the atomic publish.
    assert sorted(p.name for p in adapter.parent.iterdir()) == ["adapter", "checkpoints"]

    record = json.loads((adapter / artifacts.PLAN_FILE).read_text())
    assert record["command"] == "python -m worker train --plan plan.json"
    assert set(record["versions"]) == {"python", *artifacts.LIBRARIES}
    assert all(record["versions"].values())
    resolved = record["plan"]
    assert resolved["precision"] == "fp32" and resolved["optimizer"] == "adamw"
    assert resolved["lora_alpha"] == 16 and resolved["learning_rate"] == 1e-2
    assert set(resolved) == set(type(plan).model_fields)
    assert "lora_alpha" not in record["requested"]
    assert record["derived"]["ideas"] == [] and record["device"] == "cpu"

    metrics = json.loads((adapter / artifacts.METRICS_FILE).read_text())
    assert metrics["status"] == "succeeded"
    assert [s["step"] for s in metrics["losses"]] == list(range(1, 31))
    assert all({"loss", "learning_rate"} <= set(s) for s in metrics["losses"])
    assert metrics["final_loss"] == result.final_loss
    assert metrics["eval_loss"] == result.eval_loss
    assert metrics["estimate"] == ESTIMATE
    assert metrics["tokens_per_second"] > 0 and metrics["tokens_seen"] > 0
    peak = metrics["peak_memory"]
    assert peak["device"] == "cpu" and "RSS" in peak["measures"]
    assert peak["rss_growth_bytes"] == peak["rss_peak_bytes"] - peak["rss_baseline_bytes"] > 0

    png = (adapter / artifacts.LOSS_PLOT).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_tokens_per_second_counts_non_padding_tokens(trained, data_dir, tokenizer):
    from worker.data import tokenize_file

    _, result, _ = trained("lora")
    lengths = [
        len(e["input_ids"]) for e in tokenize_file(data_dir / "text.jsonl", tokenizer, 32).examples
    ]
    # 30 steps of 4 rows over 64 rows: the first 120 rows of two shuffled passes. Every row
    # is counted by its own length, never padded to the longest in its batch.
    assert min(lengths) * 120 <= result.tokens_seen <= max(lengths) * 120
    assert result.tokens_per_second == pytest.approx(result.tokens_seen / result.runtime_seconds)


def test_same_seed_same_losses(trained, tiny_model, data_dir, tmp_path):
    plan, result, _ = trained("lora")
    again = run_training(plan.model_copy(update={"output_dir": tmp_path}))
    assert [s.loss for s in again.losses] == [s.loss for s in result.losses]


# ---- the base against the adapter at the end --------------------------------------------------


@pytest.fixture(scope="module")
def fixed_completion(tiny_model, tmp_path_factory):
    """A run on a task the adapter learns to answer exactly (a fixed completion whatever the
    prompt), with validation every 10 steps; returns (plan, result, hooks)."""
    data = tmp_path_factory.mktemp("fixed-completion")
    train = write_fixed_completion_jsonl(data / "train.jsonl", 64, seed=0)
    valid = write_fixed_completion_jsonl(data / "valid.jsonl", 16, seed=1)
    plan = load_plan(
        plan_dict(tiny_model, train, data / "run", validation_file=str(valid), eval_steps=10)
    )
    hooks = RecordingHooks()
    return plan, run_training(plan, hooks), hooks


def test_the_job_ends_with_the_base_against_the_adapter(fixed_completion):
    # Measured on the tiny model: base loss 5.97 (perplexity 390), exact match 0/16; the
    # adapter after 30 steps 4.71 (111), 16/16.
    _, result, hooks = fixed_completion
    assert result.status == "succeeded"
    metrics = json.loads(Path(result.artifacts["metrics"]).read_text())
    comparison = metrics["comparison"]
    assert comparison == result.comparison
    assert comparison["format"] == "prompt_completion" and comparison["validation_rows"] == 16
    base, adapter = comparison["base"], comparison["adapter"]
    assert base["exact_match"] == {"matched": 0, "rows": 16, "skipped": 0, "rate": 0.0}
    assert adapter["exact_match"]["rows"] == 16 and adapter["exact_match"]["matched"] >= 14
    assert adapter["loss"] < base["loss"] - 0.5
    assert adapter["perplexity"] == pytest.approx(math.exp(adapter["loss"]))
    assert comparison["delta"]["loss"] == pytest.approx(adapter["loss"] - base["loss"])
    assert comparison["delta"]["exact_match"] == adapter["exact_match"]["rate"] >= 14 / 16
    # Every validation row has as many trained tokens: the per-token mean is the Trainer's.
    assert adapter["loss"] == pytest.approx(result.eval_loss, rel=1e-4)

    (event,) = hooks.of_type("evaluation")
    assert {k: v for k, v in event.items() if k != "message"} == comparison
    assert event["message"].startswith("validation: base loss ")
    assert f"exact match 0/16 -> {adapter['exact_match']['matched']}/16" in event["message"]
    types = [kind for kind, _ in hooks.events]
    assert types.index("evaluation") < types.index("finished")


def test_loss_plot_draws_validation_beside_training_and_the_base_as_a_line(fixed_completion):
    _, result, _ = fixed_completion
    comparison = result.comparison or {}
    validation = [(10, 5.2), (20, 4.9), (30, result.eval_loss or 0.0)]
    figure = artifacts.loss_figure(
        [s.step for s in result.losses],
        [s.loss for s in result.losses],
        validation,
        comparison["base"]["loss"],
    )
    (axes,) = figure.axes
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert set(lines) == {"training", "validation (adapter)", "validation, base model (no adapter)"}
    assert list(lines["validation (adapter)"].get_xdata()) == [10, 20, 30]
    assert set(lines["validation, base model (no adapter)"].get_ydata()) == {
        comparison["base"]["loss"]
    }
    assert [t.get_text() for t in axes.get_legend().get_texts()] == list(lines)
    png = Path(result.artifacts["loss_plot"]).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_validation_points_of_the_run_are_those_of_each_evaluation(fixed_completion, monkeypatch):
    """What the run hands to loss.png: one validation point per evaluation step (the final
    evaluation repeats step 30's), and the base model's loss."""
    plan, _, _ = fixed_completion
    drawn = {}

    def record(path, steps, losses, validation=None, base_loss=None):
        drawn.update(validation=validation, base_loss=base_loss)
        path.write_bytes(b"")

    monkeypatch.setattr(artifacts, "plot_losses", record)
    again = run_training(plan.model_copy(update={"output_dir": plan.output_dir.parent / "again"}))
    assert [step for step, _ in drawn["validation"]] == [10, 20, 30]
    assert drawn["validation"][-1][1] == pytest.approx(again.eval_loss)
    assert drawn["base_loss"] == (again.comparison or {})["base"]["loss"]


def test_a_failed_comparison_is_recorded_and_the_job_still_succeeds(
    tiny_model, data_dir, tmp_path, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("no memory left for the comparison")

    monkeypatch.setattr(evaluation, "compare", broken)
    plan = load_plan(
        plan_dict(
            tiny_model,
            data_dir / "prompt_completion.jsonl",
            tmp_path,
            validation_file=str(data_dir / "prompt_completion-validation.jsonl"),
            max_steps=2,
        )
    )
    hooks = RecordingHooks()
    result = run_training(plan, hooks)
    assert result.status == "succeeded"
    adapter = Path(result.artifacts["adapter_dir"])
    assert (adapter / "adapter_model.safetensors").is_file()
    metrics = json.loads((adapter / artifacts.METRICS_FILE).read_text())
    error = "RuntimeError: no memory left for the comparison"
    assert metrics["comparison"] == {"error": error}
    (event,) = hooks.of_type("evaluation")
    assert event["error"] == error and "saved all the same" in event["message"]
    assert any(error in w["message"] for w in hooks.of_type("warning"))
    assert any(error in w for w in metrics["warnings"])
    assert hooks.of_type("finished")


def test_runs_without_validation_or_cancelled_have_no_comparison(tiny_model, data_dir, tmp_path):
    result = run_training(small_plan(tiny_model, data_dir, tmp_path / "plain", max_steps=2))
    assert result.status == "succeeded" and result.comparison is None
    assert "comparison" in json.loads(Path(result.artifacts["metrics"]).read_text())
    hooks = RecordingHooks(stop_after=1)
    cancelled = run_training(
        small_plan(
            tiny_model,
            data_dir,
            tmp_path / "cancelled",
            validation_file=str(data_dir / "text-validation.jsonl"),
        ),
        hooks,
    )
    assert cancelled.status == "cancelled" and not hooks.of_type("evaluation")


# ---- cancel and resume ------------------------------------------------------------------------


def small_plan(tiny_model, data_dir, output_dir, **overrides):
    return load_plan(plan_dict(tiny_model, data_dir / "text.jsonl", output_dir, **overrides))


@pytest.mark.parametrize(("accumulation", "expected_steps"), [(1, 4), (2, 3)])
def test_cancel_stops_within_one_optimizer_step(
    tiny_model, data_dir, tmp_path, accumulation, expected_steps
):
    hooks = RecordingHooks(stop_after=3)
    plan = small_plan(tiny_model, data_dir, tmp_path, gradient_accumulation_steps=accumulation)
    result = run_training(plan, hooks)
    # Asked to stop after step 3 was reported: without accumulation step 4 is already under
    # way and finishes; with accumulation the next micro-batch notices and no step is taken.
    assert result.status == "cancelled"
    assert result.steps == expected_steps
    (cancelled,) = hooks.of_type("cancelled")
    assert cancelled["step"] == cancelled["adapter_step"] == expected_steps
    assert cancelled["checkpoint"] is None, "no checkpoint was due yet"
    assert not hooks.of_type("finished")
    # The adapter as trained so far is kept (worker.cancelled), with its record.
    kept = tmp_path / "adapter"
    assert {"adapter_model.safetensors", "plan.json", "metrics.json"} <= set(cancelled["files"])
    assert json.loads((kept / "metrics.json").read_text())["status"] == "cancelled"
    assert "adapter_dir" not in result.artifacts


def test_resume_continues_from_newest_complete_checkpoint(tiny_model, data_dir, tmp_path):
    settings = {"max_steps": 12, "checkpoint_steps": 4}
    hooks = RecordingHooks(stop_after=9)
    first = run_training(small_plan(tiny_model, data_dir, tmp_path, **settings), hooks)
    assert (first.status, first.steps) == ("cancelled", 10)
    assert [e["step"] for e in hooks.of_type("checkpoint")] == [4, 8]
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    # The cancel kept the newest checkpoint as one archive beside the partial adapter.
    assert hooks.of_type("cancelled")[0]["checkpoint"] == "checkpoint-8.tar"
    assert (tmp_path / "adapter" / "checkpoint-8.tar").is_file()
    # A newer checkpoint whose write was interrupted must be skipped.
    broken = checkpoints / "checkpoint-9"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(b"partial")

    hooks = RecordingHooks()
    second = run_training(small_plan(tiny_model, data_dir, tmp_path, **settings), hooks)
    assert second.status == "succeeded" and second.steps == 12
    assert second.resumed_from_step == 8
    (resumed,) = hooks.of_type("resumed")
    assert resumed["step"] == 8 and resumed["checkpoint"].endswith("checkpoint-8")
    assert any("checkpoint-9 is incomplete" in w for w in second.warnings)
    # The history runs 1..12: steps 1-8 from the checkpoint, 9-12 trained now.
    assert [s.step for s in second.losses] == list(range(1, 13))
    assert [p["step"] for p in hooks.progress] == [9, 10, 11, 12]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    # An uninterrupted run gives the same losses: resume restored weights, optimizer,
    # scheduler, data position and RNG. With --no-resume the old checkpoints go first.
    hooks = RecordingHooks()
    fresh = run_training(
        small_plan(tiny_model, data_dir, tmp_path, **settings), hooks, resume=False
    )
    assert not hooks.of_type("resumed") and fresh.resumed_from_step is None
    assert not (checkpoints / "checkpoint-9").exists()
    assert [s.loss for s in second.losses] == pytest.approx(
        [s.loss for s in fresh.losses], rel=1e-5
    )


def test_find_resumable_checkpoint(tmp_path):
    assert find_resumable_checkpoint(tmp_path / "missing") == (None, 0, [])
    for step, files in [(2, CHECKPOINT_FILES), (5, CHECKPOINT_FILES), (7, CHECKPOINT_FILES[:2])]:
        directory = tmp_path / f"checkpoint-{step}"
        directory.mkdir()
        for name in files:
            content = json.dumps({"global_step": step}) if name.endswith(".json") else "x"
            (directory / name).write_text(content)
        seal_checkpoint(directory, step)  # the completion marker the Trainer's save adds
    (tmp_path / "checkpoint-9").mkdir()
    (tmp_path / "checkpoint-9" / "trainer_state.json").write_text("{")
    (tmp_path / "checkpoint-notanumber").mkdir()
    path, step, skipped = find_resumable_checkpoint(tmp_path)
    assert (path.name, step) == ("checkpoint-5", 5)
    assert [p.name for p in skipped] == ["checkpoint-9", "checkpoint-7"]


def test_bad_data_is_refused_before_training(tiny_model, tmp_path):
    from loracle.errors import DataFileError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"prompt": 1}\n')
    with pytest.raises(DataFileError, match="line 2"):
        run_training(load_plan(plan_dict(tiny_model, bad, tmp_path / "out")))
    assert not (tmp_path / "out" / "adapter").exists()


# ---- publishing -------------------------------------------------------------------------------


def test_publish_dir_replaces_atomically_and_keeps_old_on_failure(tmp_path):
    def writer(text):
        return lambda directory: (directory / "f.txt").write_text(text)

    artifacts.publish_dir(tmp_path, "adapter", writer("one"))
    artifacts.publish_dir(tmp_path, "adapter", writer("two"))
    assert (tmp_path / "adapter" / "f.txt").read_text() == "two"

    def failing(directory):
        (directory / "f.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        artifacts.publish_dir(tmp_path, "adapter", failing)
    assert (tmp_path / "adapter" / "f.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_cpu_peak_memory_is_the_kernels_high_water_mark_since_start():
    from worker.memory_monitor import MemoryMonitor

    before = bytearray(150 * 2**20)  # a peak before the run must not count
    del before
    monitor = MemoryMonitor("cpu").start()
    spike = bytearray(100 * 2**20)  # touched (zeroed) pages: RSS
    del spike
    peak = monitor.stop()
    assert "high-water mark" in peak.measures
    assert 95 * 2**20 < peak.rss_growth_bytes < 140 * 2**20, peak
