"""Build the model the worker would train, from a config, on the meta device (or for real on
the CPU, to check the trace against a real step).

The order and every decision are the worker's (`worker.modeling.load_model_and_tokenizer`):
`model_load_kwargs` gives the dtype, sdpa attention and the `BitsAndBytesConfig`; QLoRA
goes through `peft.prepare_model_for_kbit_training` and `restore_compute_dtype`; adapters come
from `make_lora_config` through `get_peft_model`; gradient checkpointing is switched on the way
the Trainer does it. Only the source of the weights differs: `from_config` instead of
`from_pretrained`, and bitsandbytes quantizes them here instead of while loading.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from loracle import recipe
from loracle.plan import TrainingPlan

# Config keys that describe how a checkpoint was stored, not the architecture.
_STORAGE_KEYS = (
    "quantization_config",
    "torch_dtype",
    "dtype",
    "_name_or_path",
    "transformers_version",
)


class ConfigError(ValueError):
    """The config cannot be built into a transformers model. `field` is the request field
    at fault; the message says why and what to do."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def hf_config(config: Mapping[str, Any]):
    """A transformers `PretrainedConfig` from a config.json mapping (a multimodal wrapper's
    `text_config` is used, as the advisor's architecture reader does)."""
    from transformers import AutoConfig

    where = "model.config"
    cfg = dict(config)
    if (
        "text_config" in cfg
        and "hidden_size" not in cfg
        and isinstance(cfg["text_config"], Mapping)
    ):
        cfg = dict(cfg["text_config"])
        where = "model.config.text_config"
    if "auto_map" in cfg:
        raise ConfigError(
            f"{where}.auto_map",
            "the config asks for code shipped with the model; loracle never runs remote code, "
            "so it cannot trace it: use method 'analytic'",
        )
    model_type = cfg.pop("model_type", None) or "llama"
    for key in _STORAGE_KEYS:
        cfg.pop(key, None)
    try:
        return AutoConfig.for_model(model_type, **cfg)
    except ValueError as exc:
        raise ConfigError(
            f"{where}.model_type",
            f"{model_type!r} is not an architecture transformers implements ({exc}); the trace "
            "builds the real model, so use method 'analytic' for it",
        ) from None


def _quantize_4bit(model, plan: TrainingPlan, dtype: torch.dtype, device: str) -> None:
    """What transformers' bitsandbytes quantizer does while loading: every linear layer but
    the ones it skips (the output head) becomes `bnb.nn.Linear4bit`, whose weight bitsandbytes
    quantizes: packed NF4 (numel/2 bytes of uint8), one uint8 absmax per 64 weights, and for
    double quantization one fp32 absmax per 256 blocks, an offset and the code tables."""
    import bitsandbytes as bnb
    from transformers.integrations import replace_with_bnb_linear
    from transformers.quantizers.base import HfQuantizer

    quantization_config = recipe.make_bnb_config(plan, dtype)
    skip = HfQuantizer.get_modules_to_not_convert(
        model,
        quantization_config.llm_int8_skip_modules,
        getattr(model, "_keep_in_fp32_modules", None),
    )
    originals = {
        name: (module.weight.data, module.bias)
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear
    }
    replace_with_bnb_linear(
        model, modules_to_not_convert=skip, quantization_config=quantization_config
    )
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        weight, bias = originals[name]
        param = bnb.nn.Params4bit(
            weight.to(dtype),
            requires_grad=False,
            compress_statistics=quantization_config.bnb_4bit_use_double_quant,
            quant_type=quantization_config.bnb_4bit_quant_type,
            quant_storage=quantization_config.bnb_4bit_quant_storage,
            module=module,
        )
        module.weight = param._quantize(torch.device(device))
        if bias is not None:
            module.bias = torch.nn.Parameter(bias.data.to(dtype), requires_grad=False)
    model.is_loaded_in_4bit = True


def build_model(config: Mapping[str, Any], plan: TrainingPlan, device: str = "meta"):
    """The peft model the worker would train for `plan`, with the architecture `config`.

    `device` is "meta" (no memory, no data: for tracing), or "cpu" or "cuda" (random weights,
    for checking a trace against real steps). `plan` must be resolved (precision and
    optimizer set). Returns the `PeftModel` in training mode.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    architecture = hf_config(config)
    kwargs = recipe.model_load_kwargs(plan, "cuda", architecture.model_type)
    dtype = kwargs["dtype"]
    place = torch.device(device) if device in ("meta", "cuda") else contextlib.nullcontext()
    try:
        with place:
            model = AutoModelForCausalLM.from_config(
                architecture,
                dtype=dtype,
                attn_implementation=kwargs["attn_implementation"],
                trust_remote_code=False,
            )
    except ValueError as exc:
        # transformers refuses the configuration: the worker would fail the same way.
        raise ConfigError(
            "model.config.model_type",
            f"transformers cannot build {architecture.model_type!r} the way the worker loads "
            f"it ({kwargs['attn_implementation']} attention): "
            f"{str(exc).splitlines()[0][:300]}; use method 'analytic'",
        ) from None
    if plan.quantize_4bit:
        _quantize_4bit(model, plan, dtype, device)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=plan.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        recipe.restore_compute_dtype(model, dtype)
    with place:
        model = get_peft_model(model, recipe.make_lora_config(plan))
    if plan.gradient_checkpointing:
        # Trainer(...).train() with gradient_checkpointing=True: the worker's kwargs, then
        # enable_input_require_grads as transformers does for a frozen embedding.
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=dict(
                training_arguments(plan).gradient_checkpointing_kwargs
            )
        )
    # `Trainer.__init__` (transformers 5.24, its last step) sets `model.config.use_cache` to
    # `TrainingArguments.use_cache`, False unless asked. Left at the config's True, a forward
    # without checkpointing fills a DynamicCache: per layer a copy of the keys and values.
    model.config.use_cache = training_arguments(plan).use_cache
    model.train()
    return model


def training_arguments(plan: TrainingPlan):
    """The worker's own `TrainingArguments` for this plan (built for the CPU: only the fields
    that do not depend on the device are read)."""

    cpu_plan = plan
    if plan.precision == "fp16":
        # transformers refuses fp16 mixed precision without a GPU; nothing read from the
        # arguments depends on it.
        cpu_plan = plan.model_copy(update={"precision": "bf16"})
    return recipe.training_arguments(cpu_plan, "cpu", Path("/nonexistent/loracle-trace"))
