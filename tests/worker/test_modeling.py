from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from tests.utils.builders import plan_dict
from worker import modeling
from worker.errors import ModelSourceError
from worker.plan import load_plan

VARIANTS = [
    ("lora", []),
    ("qlora", []),
    ("dora", []),
    ("loraplus", []),
    ("qlora", ["loraplus"]),
    ("qlora", ["dora"]),
]


def make_plan(variant="lora", combine_with=(), **overrides):
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


# ---- configs from the plan --------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "combine_with"), VARIANTS)
def test_lora_config_per_variant(variant, combine_with):
    plan = make_plan(variant, combine_with, lora_rank=8, lora_dropout=0.1)
    config = modeling.make_lora_config(plan)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.1)
    assert config.target_modules == "all-linear"
    assert config.use_dora is ("dora" in (variant, *combine_with))
    assert config.bias == "none"
    assert config.task_type == "CAUSAL_LM"


def test_lora_config_named_targets():
    config = modeling.make_lora_config(make_plan(target_modules=["q_proj", "v_proj"]))
    assert set(config.target_modules) == {"q_proj", "v_proj"}


@pytest.mark.parametrize(("variant", "combine_with"), VARIANTS)
def test_bnb_config_only_for_qlora(variant, combine_with):
    config = modeling.make_bnb_config(make_plan(variant, combine_with), torch.bfloat16)
    if "qlora" not in (variant, *combine_with):
        assert config is None
        return
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def test_model_load_kwargs_never_allow_remote_code_or_pickles():
    plan = make_plan("qlora", precision="fp32", optimizer="adamw")
    kwargs = modeling.model_load_kwargs(plan, "cpu")
    assert kwargs["trust_remote_code"] is False
    assert kwargs["use_safetensors"] is True
    assert kwargs["attn_implementation"] == "sdpa"
    assert kwargs["dtype"] == torch.float32
    assert kwargs["quantization_config"].bnb_4bit_compute_dtype == torch.float32
    assert "device_map" not in kwargs
    assert modeling.model_load_kwargs(plan, "cuda")["device_map"] == {"": 0}


# ---- precision and optimizer resolution -------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "device", "bf16", "expected"),
    [
        ("auto", "cpu", None, "fp32"),
        ("auto", "cuda", True, "bf16"),
        ("auto", "cuda", False, "fp16"),
        ("bf16", "cpu", None, "bf16"),
        ("fp16", "cuda", True, "fp16"),
    ],
)
def test_resolve_precision(precision, device, bf16, expected):
    assert modeling.resolve_precision(precision, device, bf16) == expected


@pytest.mark.parametrize(("variant", "combine_with"), VARIANTS)
def test_default_optimizer(variant, combine_with):
    plan = make_plan(variant, combine_with)
    quantized = "qlora" in (variant, *combine_with)
    assert modeling.default_optimizer(plan, "cuda") == (
        "paged_adamw_8bit" if quantized else "adamw"
    )
    assert modeling.default_optimizer(plan, "cpu") == "adamw"
    assert modeling.default_optimizer(
        make_plan(variant, combine_with, optimizer="sgd"), "cuda"
    ) == ("sgd")


@pytest.mark.parametrize(
    ("name", "trainer_name"),
    [
        ("adamw", "adamw_torch"),
        ("adamw_8bit", "adamw_bnb_8bit"),
        ("paged_adamw_8bit", "paged_adamw_8bit"),
        ("sgd", "sgd"),
    ],
)
def test_trainer_optimizer_names(name, trainer_name):
    assert modeling.TRAINER_OPTIM[name] == trainer_name
    # The Trainer knows every name we map to.
    from transformers.training_args import OptimizerNames

    assert OptimizerNames(trainer_name)


def test_cpu_optimizer_fallbacks(monkeypatch):
    plan = make_plan("qlora", optimizer="paged_adamw_8bit")
    monkeypatch.setattr(modeling, "bnb_8bit_optimizer_works", lambda device: True)
    name, warnings = modeling.resolve_optimizer(plan, "cpu")
    assert name == "adamw_8bit"
    assert "nothing to page" in warnings[0]
    monkeypatch.setattr(modeling, "bnb_8bit_optimizer_works", lambda device: False)
    name, warnings = modeling.resolve_optimizer(plan, "cpu")
    assert name == "adamw"
    assert len(warnings) == 2 and "does not run on cpu" in warnings[1]
    name, warnings = modeling.resolve_optimizer(make_plan(optimizer="adamw_8bit"), "cpu")
    assert (name, len(warnings)) == ("adamw", 1)
    assert modeling.resolve_optimizer(make_plan(optimizer="sgd"), "cpu") == ("sgd", [])


def test_bnb_probe_runs_on_this_machine():
    # bitsandbytes 0.50 runs its 8-bit optimizers on CPU; the probe must see that, not guess.
    assert modeling.bnb_8bit_optimizer_works("cpu") is True


def test_resolve_plan_settles_open_fields(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan, warnings = modeling.resolve_plan(make_plan("qlora"), "cpu")
    assert (plan.precision, plan.optimizer, warnings) == ("fp32", "adamw", [])
    assert plan.train_file == tmp_path / "t.jsonl" and plan.output_dir == tmp_path / "out"
    assert plan.model == "org/name"


def test_build_optimizer_requires_resolved_plan():
    with pytest.raises(ValueError, match="resolve"):
        modeling.build_optimizer(None, make_plan("loraplus"))
    assert modeling.build_optimizer(None, make_plan("lora", optimizer="adamw")) is None


# ---- built models -----------------------------------------------------------------------------


def resolved(tiny_model, tmp_path, **overrides):
    plan = load_plan(plan_dict(tiny_model, tmp_path / "t.jsonl", tmp_path / "out", **overrides))
    return modeling.resolve_plan(plan, "cpu")[0]


@pytest.mark.parametrize(("variant", "combine_with"), VARIANTS)
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
    optimizer = modeling.build_optimizer(model, plan)
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
    assert isinstance(modeling.build_optimizer(model, plan), bnb.optim.AdamW8bit)


# ---- where models may come from ---------------------------------------------------------------


def test_hub_ids_pass_through(tmp_path):
    assert modeling.resolve_model_source("meta-llama/Llama-3.2-1B", [tmp_path]) == (
        "meta-llama/Llama-3.2-1B"
    )
    with pytest.raises(ModelSourceError, match="neither a hub id"):
        modeling.resolve_model_source("not a model", [tmp_path])


def test_local_model_inside_root_is_resolved(tiny_model, models_root):
    assert modeling.resolve_model_source(str(tiny_model), [models_root]) == str(
        tiny_model.resolve()
    )


def test_local_model_outside_roots_is_refused(tiny_model, tmp_path):
    other_root = tmp_path / "allowed"
    other_root.mkdir()
    with pytest.raises(ModelSourceError, match="outside the allowed model roots") as info:
        modeling.resolve_model_source(str(tiny_model), [other_root])
    assert str(other_root) in str(info.value)
    with pytest.raises(ModelSourceError, match="no local model roots"):
        modeling.resolve_model_source(str(tiny_model), [])


def test_relative_path_that_looks_like_a_hub_id_is_still_checked(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_model.parent.parent)
    relative = f"{tiny_model.parent.name}/{tiny_model.name}"
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    with pytest.raises(ModelSourceError, match="outside the allowed model roots"):
        modeling.resolve_model_source(relative, [allowed])


def test_symlink_escaping_the_root_is_refused(tiny_model, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "model").symlink_to(tiny_model, target_is_directory=True)
    with pytest.raises(ModelSourceError, match="outside the allowed model roots"):
        modeling.resolve_model_source(str(root / "model"), [root])
    # A model folder inside the root whose weights file links out of it.
    inner = root / "linked-weights"
    inner.mkdir()
    for item in tiny_model.iterdir():
        if item.suffix == ".safetensors":
            (inner / item.name).symlink_to(item)
        else:
            shutil.copy(item, inner / item.name)
    with pytest.raises(ModelSourceError, match="links to"):
        modeling.resolve_model_source(str(inner), [root])


def test_symlink_inside_the_root_is_fine(tiny_model, models_root):
    link = models_root / "alias"
    if not link.exists():
        link.symlink_to(tiny_model, target_is_directory=True)
    assert modeling.resolve_model_source(str(link), [models_root]) == str(tiny_model.resolve())


def test_remote_code_models_are_refused(tiny_model, tmp_path):
    root = tmp_path / "root"
    model = root / "remote"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError, match="asks for remote code") as info:
        modeling.resolve_model_source(str(model), [root])
    assert "auto_map" in str(info.value)
    # The loader refuses it too, even if resolution was skipped.
    plan = resolved(model, tmp_path)
    with pytest.raises(ModelSourceError, match="remote code"):
        modeling.load_model_and_tokenizer(plan, "cpu")


def test_models_without_safetensors_are_refused(tiny_model, tmp_path):
    root = tmp_path / "root"
    model = root / "pickled"
    shutil.copytree(tiny_model, model)
    for weights in model.glob("*.safetensors"):
        os.rename(weights, weights.with_suffix(".bin"))
    with pytest.raises(ModelSourceError, match=r"no \.safetensors weights"):
        modeling.resolve_model_source(str(model), [root])
    with pytest.raises(ModelSourceError, match="does not exist"):
        modeling.resolve_model_source(str(root / "nothing"), [root])


def test_qlora_keeps_non_4bit_weights_in_the_compute_dtype(tiny_model):
    """prepare_model_for_kbit_training upcasts them to fp32; the worker returns them to the
    compute dtype (see restore_compute_dtype), and adapters stay fp32 for the optimizer."""
    import bitsandbytes as bnb

    plan = make_plan("qlora", precision="bf16", optimizer="adamw").model_copy(
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

    assert modeling.attention_implementation("gemma2") == "eager"
    assert modeling.attention_implementation("llama") == "sdpa"
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
    plan = make_plan("lora", precision="fp32", optimizer="adamw").model_copy(
        update={"model": str(directory)}
    )
    model, _ = modeling.load_model_and_tokenizer(plan, "cpu")
    assert model.config._attn_implementation == "eager"
    ids = torch.randint(0, vocab, (1, 8))
    model(input_ids=ids, labels=ids).loss.backward()
