"""Merge and export (worker.merge): for every variant, the merged model answers like the
adapter on its base, and a later job trains on top of it.

Adapters are trained for real, a few steps at a high learning rate on the tiny model, so
lora_B is far from its zero start (an untrained adapter is the identity and would prove
nothing): each test first checks that the adapter moves the logits.

Tolerances, on logits of the tiny model in fp32 on the CPU (docs/merge.md):
- merged vs adapter-on-base, every variant: max |difference| <= MERGE_ATOL (1e-4). A merge
  only reorders float arithmetic: x(W + BA) against xW + (xB)A.
- QLoRA: the reference is the adapter on the NF4 base dequantized to the merge's dtype (what
  the merge merges into), within MERGE_ATOL. Against the adapter on the 4-bit base as it ran in
  training (bitsandbytes' 4-bit layers), within QLORA_4BIT_ATOL (1e-3): looser, because that
  path dequantizes inside every matmul in the compute dtype (in fp32 here it measures the same
  3.6e-7; bf16 compute on a card rounds more). Merging into the original, never quantized
  weights instead is measured for the docs only: about 0.1 away, the base's NF4 error.
- A QLoRA adapter exported in bf16 (what a job trained on a card gets): within BF16_ATOL (5e-2)
  of the fp32 reference, bf16's rounding of the weights (measured 1.1e-2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loracle.model_source import resolve_model_source
from loracle.plan import load_plan
from loracle.recipe import model_load_kwargs
from tests.utils.builders import plan_dict
from worker import artifacts
from worker.merge import RECORD_FILE, merge_adapter
from worker.training import run_training

MERGE_ATOL = 1e-4
QLORA_4BIT_ATOL = 1e-3
BF16_ATOL = 5e-2

RUNS = {
    "lora": {"variant": "lora"},
    "dora": {"variant": "dora"},
    "qlora": {"variant": "qlora"},
    "qlora+dora": {"variant": "qlora", "combine_with": ["dora"]},
}
# Measured differences, printed at the end of the module (pytest -s shows them).
MEASURED: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def adapter(tiny_model, train_file, tmp_path_factory):
    """Train each entry of RUNS once per module (8 steps), on first use: its adapter dir."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            plan = load_plan(
                plan_dict(
                    tiny_model,
                    train_file,
                    tmp_path_factory.mktemp(f"run-{name}"),
                    max_steps=8,
                    learning_rate=2e-2,
                    # fp32 on any device, so the tolerances hold on a card too (the merge
                    # and the references below run on the CPU).
                    precision="fp32",
                    **RUNS[name],
                )
            )
            result = run_training(plan)
            assert result.status == "succeeded"
            cache[name] = Path(result.artifacts["adapter_dir"])
        return cache[name]

    yield get
    for name, diffs in MEASURED.items():
        print(f"merge {name}: " + ", ".join(f"{k}={v:.2e}" for k, v in diffs.items()))


@pytest.fixture(scope="module")
def batch(tokenizer, train_file):
    from worker.data import PadCollator, tokenize_file

    examples = tokenize_file(train_file, tokenizer, seq_len=32).examples[:8]
    return PadCollator(tokenizer.pad_token_id)(examples)


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def as_trained(model):
    """The 4-bit model computing as it did in training. In inference mode on a CPU with
    AVX512-BF16, bitsandbytes repacks each 4-bit weight at its first forward for a bf16 kernel
    (`Linear4bit.forward`, `packing_format_for_cpu`): its matmuls then round in bf16, and
    peft's DoRA, which dequantizes the weight itself for the column norms, reads the repacked
    layout as if it were the plain one (logits off by 0.2 with QLoRA + DoRA here). Training
    never repacks (it runs with gradients), so the reference turns the repacking off."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


@pytest.mark.parametrize("name", list(RUNS))
def test_merged_model_answers_like_the_adapter_on_its_base(adapter, name, batch, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir = adapter(name)
    record = load_plan(adapter_dir / artifacts.PLAN_FILE)
    out = merge_adapter(record.model, adapter_dir, tmp_path / "merged", job_id="job_test")

    # What the merge merged into: the base as stored, or for QLoRA the NF4 base dequantized.
    if record.quantize_4bit:
        base = AutoModelForCausalLM.from_pretrained(
            record.model, **model_load_kwargs(record, "cpu")
        ).dequantize(dtype=torch.float32)
    else:
        base = AutoModelForCausalLM.from_pretrained(record.model, dtype=torch.float32)
    base_logits = logits(base, batch)
    reference = logits(PeftModel.from_pretrained(base, adapter_dir), batch)
    moved = max_diff(reference, base_logits)
    assert moved > 0.1, "the adapter must be non-trivial for the comparison to mean anything"

    merged = AutoModelForCausalLM.from_pretrained(out.out_dir, use_safetensors=True)
    assert merged.dtype == torch.float32
    merged_logits = logits(merged, batch)
    diffs = {"adapter_effect": moved, "merged_vs_adapter": max_diff(merged_logits, reference)}
    assert diffs["merged_vs_adapter"] <= MERGE_ATOL, diffs

    if record.quantize_4bit:
        # The adapter on the 4-bit base, as it was trained.
        four_bit = as_trained(
            AutoModelForCausalLM.from_pretrained(record.model, **model_load_kwargs(record, "cpu"))
        )
        diffs["merged_vs_adapter_on_4bit"] = max_diff(
            merged_logits, logits(PeftModel.from_pretrained(four_bit, adapter_dir), batch)
        )
        assert diffs["merged_vs_adapter_on_4bit"] <= QLORA_4BIT_ATOL, diffs
        # For the docs: what merging into the original (never quantized) weights would give.
        original = AutoModelForCausalLM.from_pretrained(record.model, dtype=torch.float32)
        naive = PeftModel.from_pretrained(original, adapter_dir).merge_and_unload()
        diffs["original_base_merge_vs_adapter"] = max_diff(logits(naive, batch), reference)
        assert (merged.model.layers[0].self_attn.q_proj.weight.dtype) == torch.float32
    MEASURED[name] = diffs

    # A plain transformers model: no quantization, no adapter, with tokenizer and record.
    directory = Path(out.out_dir)
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"
    assert (directory / "model.safetensors").is_file()
    assert not (directory / "adapter_config.json").exists()
    assert AutoTokenizer.from_pretrained(directory).pad_token is not None
    saved = json.loads((directory / RECORD_FILE).read_text())
    assert saved["job_id"] == "job_test"
    assert saved["variant"] == record.variant
    assert saved["combine_with"] == record.combine_with
    assert saved["dtype"] == out.dtype == "fp32"
    assert saved["base_weights"] == ("nf4-dequantized" if record.quantize_4bit else "original")
    assert out.bytes == sum(p.stat().st_size for p in directory.iterdir())


def test_a_merged_model_in_a_model_root_trains_again(adapter, model_root, train_file, tmp_path):
    """Written into the model root, the merged QLoRA model is a base like any other: the
    model-source check accepts it and a job trains on it (a 4-bit QLoRA job, so it is
    quantized again for that run only)."""
    adapter_dir = adapter("qlora")
    record = load_plan(adapter_dir / artifacts.PLAN_FILE)
    merge_adapter(record.model, adapter_dir, model_root / "tiny-llama-merged")
    resolved = resolve_model_source("tiny-llama-merged", [model_root])
    assert resolved == str((model_root / "tiny-llama-merged").resolve())
    for variant in ("lora", "qlora"):
        plan = load_plan(
            plan_dict(resolved, train_file, tmp_path / variant, max_steps=2, variant=variant)
        )
        result = run_training(plan)
        assert result.status == "succeeded" and result.steps == 2


def test_the_merge_command_merges_a_runs_output_dir(adapter, tmp_path, capsys):
    from worker.__main__ import main

    run_dir = adapter("lora").parent
    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(run_dir), "--out", str(out), "--job", "job_x"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["out_dir"] == str(out) and answer["dtype"] == "fp32"
    assert answer["base_weights"] == "original" and "model.safetensors" in answer["files"]
    assert json.loads((out / RECORD_FILE).read_text())["job_id"] == "job_x"


def test_a_bf16_merge_of_a_qlora_adapter_stays_within_bf16_rounding(adapter, batch, tmp_path):
    """The 16-bit export a QLoRA job gets on a card (bf16 there): same model, weights rounded
    to bf16. Against the fp32 reference its logits differ by bf16 rounding, within
    BF16_ATOL."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = adapter("qlora")
    record = load_plan(adapter_dir / artifacts.PLAN_FILE)
    out = merge_adapter(record.model, adapter_dir, tmp_path / "merged", dtype="bf16")
    merged = AutoModelForCausalLM.from_pretrained(out.out_dir)
    assert merged.dtype == torch.bfloat16 and out.dtype == "bf16"
    base = AutoModelForCausalLM.from_pretrained(
        record.model, **model_load_kwargs(record, "cpu")
    ).dequantize(dtype=torch.float32)
    reference = logits(PeftModel.from_pretrained(base, adapter_dir), batch)
    diff = max_diff(logits(merged, batch), reference)
    MEASURED["qlora bf16 export"] = {"merged_bf16_vs_adapter_fp32": diff}
    assert diff <= BF16_ATOL
