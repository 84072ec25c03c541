"""`loracle.recipe`: how a plan becomes library objects."""

from __future__ import annotations

import pytest
import torch

from advisor.catalog.models import find_model
from advisor.hyperparams import suggest
from advisor.memory import estimate
from advisor.profile import TrainingSettings
from advisor.variants import combination, combinations
from loracle import recipe
from tests.utils.builders import bare_plan

ALL = [(c.variant, list(c.combine_with)) for c in combinations()]


@pytest.mark.parametrize(("variant", "combine_with"), ALL)
def test_lora_config_per_variant(variant, combine_with):
    plan = bare_plan(variant, combine_with, lora_rank=8, lora_dropout=0.1)
    config = recipe.make_lora_config(plan)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.1)
    assert config.target_modules == "all-linear"
    assert config.use_dora is ("dora" in (variant, *combine_with))
    assert config.bias == "none"
    assert config.task_type == "CAUSAL_LM"


def test_lora_config_named_targets():
    config = recipe.make_lora_config(bare_plan(target_modules=["q_proj", "v_proj"]))
    assert set(config.target_modules) == {"q_proj", "v_proj"}


@pytest.mark.parametrize(("variant", "combine_with"), ALL)
def test_bnb_config_only_for_qlora(variant, combine_with):
    config = recipe.make_bnb_config(bare_plan(variant, combine_with), torch.bfloat16)
    if "qlora" not in (variant, *combine_with):
        assert config is None
        return
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def test_model_load_kwargs_never_allow_remote_code_or_pickles():
    plan = bare_plan("qlora", precision="fp32", optimizer="adamw")
    kwargs = recipe.model_load_kwargs(plan, "cpu")
    assert kwargs["trust_remote_code"] is False
    assert kwargs["use_safetensors"] is True
    assert kwargs["attn_implementation"] == "sdpa"
    assert kwargs["dtype"] == torch.float32
    assert kwargs["quantization_config"].bnb_4bit_compute_dtype == torch.float32
    assert "device_map" not in kwargs
    assert recipe.model_load_kwargs(plan, "cuda")["device_map"] == {"": 0}


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
    assert recipe.resolve_precision(precision, device, bf16) == expected


@pytest.mark.parametrize(("variant", "combine_with"), ALL)
def test_default_optimizer(variant, combine_with):
    plan = bare_plan(variant, combine_with)
    quantized = "qlora" in (variant, *combine_with)
    assert recipe.default_optimizer(plan, "cuda") == ("paged_adamw_8bit" if quantized else "adamw")
    assert recipe.default_optimizer(plan, "cpu") == "adamw"
    assert recipe.default_optimizer(bare_plan(variant, combine_with, optimizer="sgd"), "cuda") == (
        "sgd"
    )


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
    assert recipe.TRAINER_OPTIM[name] == trainer_name
    # The Trainer knows every name we map to.
    from transformers.training_args import OptimizerNames

    assert OptimizerNames(trainer_name)


def test_build_optimizer_requires_resolved_plan():
    with pytest.raises(ValueError, match="resolve"):
        recipe.build_optimizer(None, bare_plan("loraplus"))
    assert recipe.build_optimizer(None, bare_plan("lora", optimizer="adamw")) is None


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("combo", combinations(), ids=lambda c: c.evidence_key)
def test_advice_and_worker_build_the_same_configs(combo, precision):
    """The advice's lora_config / bnb_config, turned into peft's and transformers' objects,
    equal what the worker builds from a plan that leaves alpha, dropout and LoRA+'s ratio to
    their defaults (as a job that follows the advice does)."""
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    arch = find_model("meta-llama/Llama-2-7b-hf").architecture
    training = TrainingSettings(
        seq_len=512, lora_rank=32, target_modules=["q_proj", "v_proj"], precision=precision
    )
    advice = suggest(arch, training, combo, precision)
    plan = bare_plan(
        combo.variant,
        combo.combine_with,
        lora_rank=training.lora_rank,
        target_modules=training.target_modules,
        precision=precision,
    )
    assert LoraConfig(**advice["lora_config"]) == recipe.make_lora_config(plan)
    worker_bnb = recipe.make_bnb_config(plan, recipe.torch_dtype(precision))
    if advice["bnb_config"] is None:
        assert worker_bnb is None
    else:
        dtype = getattr(torch, advice["bnb_config"]["bnb_4bit_compute_dtype"])
        advised = BitsAndBytesConfig(**{**advice["bnb_config"], "bnb_4bit_compute_dtype": dtype})
        assert advised.to_dict() == worker_bnb.to_dict()
    if combo.loraplus:
        assert advice["loraplus_lr_ratio"] == plan.loraplus_lr_ratio
    else:
        assert advice["loraplus_lr_ratio"] is None and not plan.use_loraplus


def test_rslora_is_lora_with_the_rank_stable_scale(tiny_model):
    """rsLoRA through the registry alone: peft gets use_rslora, the scale is alpha/sqrt(r),
    and the memory is LoRA's."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    plain, stable = bare_plan("lora", lora_rank=16), bare_plan("rslora", lora_rank=16)
    assert recipe.make_lora_config(stable).use_rslora is True
    assert recipe.make_lora_config(plain).use_rslora is False
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    layer = get_peft_model(base, recipe.make_lora_config(stable))
    scale = next(
        m.scaling["default"]
        for m in layer.modules()
        if isinstance(getattr(m, "scaling", None), dict)
    )
    assert scale == pytest.approx(stable.lora_alpha / stable.lora_rank**0.5)
    arch = find_model("meta-llama/Llama-2-7b-hf").architecture
    settings = TrainingSettings(lora_rank=64)
    assert estimate(arch, settings, combination("rslora")).as_dict() == {
        **estimate(arch, settings, combination("lora")).as_dict(),
        "variant": "rslora",
    }
