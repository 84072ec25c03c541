"""`worker.modeling`: the device, the optimizer that runs here, and the loaded model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from loracle import model_source, recipe
from loracle.errors import ModelSourceError
from loracle.plan import load_plan
from tests.utils.builders import LOADED_COMBINATIONS, bare_plan, plan_dict
from worker import modeling


def test_cpu_optimizer_fallbacks(monkeypatch):
    plan = bare_plan("qlora", optimizer="paged_adamw_8bit")
    monkeypatch.setattr(modeling, "bnb_8bit_optimizer_works", lambda device: True)
    name, warnings = modeling.resolve_optimizer(plan, "cpu")
    assert name == "adamw_8bit"
    assert "nothing to page" in warnings[0]
    monkeypatch.setattr(modeling, "bnb_8bit_optimizer_works", lambda device: False)
    name, warnings = modeling.resolve_optimizer(plan, "cpu")
    assert name == "adamw"
    assert len(warnings) == 2 and "does not run on cpu" in warnings[1]
    name, warnings = modeling.resolve_optimizer(bare_plan(optimizer="adamw_8bit"), "cpu")
    assert (name, len(warnings)) == ("adamw", 1)
    assert modeling.resolve_optimizer(bare_plan(optimizer="sgd"), "cpu") == ("sgd", [])


def test_bnb_probe_runs_on_this_machine():
    # bitsandbytes 0.50 runs its 8-bit optimizers on CPU; the probe must see that, not guess.
    assert modeling.bnb_8bit_optimizer_works("cpu") is True


def test_resolve_plan_settles_open_fields(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan, warnings = modeling.resolve_plan(bare_plan("qlora"), "cpu")
    assert (plan.precision, plan.optimizer, warnings) == ("fp32", "adamw", [])
    assert plan.train_file == tmp_path / "t.jsonl" and plan.output_dir == tmp_path / "out"
    assert plan.model == "org/name"


def resolved(tiny_model, tmp_path, **overrides):
    plan = load_plan(plan_dict(tiny_model, tmp_path / "t.jsonl", tmp_path / "out", **overrides))
    return modeling.resolve_plan(plan, "cpu")[0]


@pytest.mark.parametrize(("variant", "combine_with"), LOADED_COMBINATIONS)
def test_loaded_model_matches_variant(tiny_model, tmp_path, variant, combine_with):
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    plan = resolved(tiny_model, tmp_path, variant=variant, combine_with=combine_with)
    model, tokenizer = modeling.load_model_and_tokenizer(plan, "cpu")
    lora_layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    # all-linear: 7 projections per decoder layer, the output head left alone.
    assert len(lora_layers) == 7 * 2
    for layer in lora_layers:
        base = layer.get_base_layer()
        if plan.quantize_4bit:
            assert isinstance(base, bnb.nn.Linear4bit)
            assert base.weight.quant_type == "nf4"
        else:
            assert type(base) is torch.nn.Linear
        assert bool(layer.lora_magnitude_vector) is plan.use_dora
        assert layer.lora_A["default"].weight.dtype == torch.float32
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert tokenizer.pad_token == "<pad>"


def test_missing_pad_token_becomes_eos(tiny_model_plain, tmp_path):
    _, tokenizer = modeling.load_model_and_tokenizer(resolved(tiny_model_plain, tmp_path), "cpu")
    assert tokenizer.pad_token == tokenizer.eos_token


@pytest.mark.parametrize("combine_with", [[], ["qlora"]])
def test_loraplus_gives_lora_b_sixteen_times_lora_a_lr(tiny_model, tmp_path, combine_with):
    plan = resolved(
        tiny_model, tmp_path, variant="loraplus", combine_with=combine_with, learning_rate=1e-3
    )
    model, _ = modeling.load_model_and_tokenizer(plan, "cpu")
    optimizer = recipe.build_optimizer(model, plan)
    assert isinstance(optimizer, torch.optim.AdamW)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    a = [lr_of[id(p)] for n, p in named.items() if "lora_A" in n]
    b = [lr_of[id(p)] for n, p in named.items() if "lora_B" in n]
    assert a and b and len(a) == len(b)
    assert a == pytest.approx([1e-3] * len(a))
    assert b == pytest.approx([16e-3] * len(b))
    assert all(lr_b == pytest.approx(16 * lr_a) for lr_a, lr_b in zip(a, b, strict=True))
    assert all(id(p) in lr_of for p in named.values() if p.requires_grad)


def test_loraplus_uses_the_planned_optimizer_class(tiny_model, tmp_path):
    import bitsandbytes as bnb

    plan = resolved(tiny_model, tmp_path, variant="loraplus", optimizer="adamw_8bit")
    model, _ = modeling.load_model_and_tokenizer(plan, "cpu")
    assert isinstance(recipe.build_optimizer(model, plan), bnb.optim.AdamW8bit)


def test_qlora_keeps_non_4bit_weights_in_the_compute_dtype(tiny_model):
    """prepare_model_for_kbit_training upcasts them to fp32; the worker returns them to the
    compute dtype (see restore_compute_dtype), and adapters stay fp32 for the optimizer."""
    import bitsandbytes as bnb

    plan = bare_plan("qlora", precision="bf16", optimizer="adamw").model_copy(
        update={"model": str(tiny_model)}
    )
    model, _ = modeling.load_model_and_tokenizer(plan, "cpu")
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.dtype == torch.float32, name
        elif param.__class__.__name__ != "Params4bit":
            assert param.dtype == torch.bfloat16, name
    # and a forward/backward in bf16 runs, with the residual stream in bf16
    ids = torch.randint(0, 100, (1, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, labels=ids, output_hidden_states=True)
    assert out.hidden_states[-1].dtype == torch.bfloat16
    out.loss.backward()


def test_gemma2_trains_with_eager_attention(tmp_path):
    """transformers has no sdpa for Gemma-2 (soft-capped attention logits): the worker
    picks eager for it instead of failing to load, and the memory model counts eager's
    s x s scores (advisor.architecture: attention 'eager')."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from advisor.architecture import from_hf_config
    from tests.utils.builders import build_tokenizer

    assert recipe.attention_implementation("gemma2") == "eager"
    assert recipe.attention_implementation("llama") == "sdpa"
    directory = tmp_path / "tiny-gemma2"
    vocab = len(build_tokenizer(directory))
    config = Gemma2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=vocab,
    )
    torch.manual_seed(0)
    Gemma2ForCausalLM(config).save_pretrained(directory)
    assert from_hf_config(config.to_dict()).attention == "eager"
    plan = bare_plan("lora", precision="fp32", optimizer="adamw").model_copy(
        update={"model": str(directory)}
    )
    model, _ = modeling.load_model_and_tokenizer(plan, "cpu")
    assert model.config._attn_implementation == "eager"
    ids = torch.randint(0, vocab, (1, 8))
    model(input_ids=ids, labels=ids).loss.backward()


def test_remote_code_models_are_refused(tiny_model, tmp_path):
    root = tmp_path / "root"
    model = root / "remote"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError, match="asks for remote code") as info:
        model_source.resolve_model_source(str(model), [root])
    assert "auto_map" in str(info.value)
    # The loader refuses it too, even if resolution was skipped.
    plan = resolved(model, tmp_path)
    with pytest.raises(ModelSourceError, match="remote code"):
        modeling.load_model_and_tokenizer(plan, "cpu")
