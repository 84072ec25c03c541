"""How a plan becomes library objects: the one place that decides it, for the worker that
trains and the memory tracer that rebuilds the same model on the meta device.

Every function is a function of a resolved plan (and the device): peft's ``LoraConfig`` and
transformers' ``BitsAndBytesConfig`` from the variant registry (`advisor.variants`), the
keyword arguments of ``from_pretrained``, the optimizer (LoRA+ through
``peft.optimizers.create_loraplus_optimizer``) and the Trainer's ``TrainingArguments``.
Torch, transformers, peft and bitsandbytes are imported inside the functions that use them,
so this module imports without them (the API builds plans and checks them torch-free).

Decisions, in the order a run meets them:

- Precision (`resolve_precision`): `auto` is bf16 on a CUDA card that supports it, fp16 on one
  that does not, fp32 on CPU. Explicit values are honoured.
- Optimizer (`default_optimizer`): unset means paged 8-bit AdamW for QLoRA on CUDA (the QLoRA
  recipe) and AdamW elsewhere.
- Quantization (`make_bnb_config`): what the registry's 4-bit idea sets, compute in the run's
  precision.
- Adapters (`make_lora_config`): what the registry's ideas set in ``LoraConfig``. Adapter
  weights stay fp32 (peft's `autocast_adapter_dtype=True`) whatever the base dtype.
- LoRA+ (`build_optimizer`): `peft.optimizers.create_loraplus_optimizer`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loracle.plan import TrainingPlan

if TYPE_CHECKING:
    import torch

# The Trainer's `optim` names for the plan's optimizer names.
TRAINER_OPTIM = {
    "adamw": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "sgd": "sgd",
}

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def resolve_precision(precision: str, device: str, bf16_supported: bool | None = None) -> str:
    """`auto` → bf16 on a CUDA card with bf16, fp16 on one without, fp32 on CPU; explicit values
    pass through. `bf16_supported` defaults to asking torch."""
    if precision != "auto":
        return precision
    if device != "cuda":
        return "fp32"
    if bf16_supported is None:
        import torch

        bf16_supported = torch.cuda.is_bf16_supported()
    return "bf16" if bf16_supported else "fp16"


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision (`bf16`, `fp16`, `fp32`)."""
    import torch

    return getattr(torch, DTYPES[precision])


def default_optimizer(plan: TrainingPlan, device: str) -> str:
    """The optimizer a plan gets when it names none: paged 8-bit AdamW for QLoRA on CUDA (the
    QLoRA paper's recipe, which pages optimizer state out under memory spikes), else AdamW."""
    if plan.optimizer is not None:
        return plan.optimizer
    return "paged_adamw_8bit" if plan.quantize_4bit and device == "cuda" else "adamw"


def make_lora_config(plan: TrainingPlan) -> Any:
    """peft ``LoraConfig`` for the plan: the registry's fields for its combination
    (``use_dora``, ``use_rslora``...) with the plan's rank, alpha, dropout and targets."""
    from peft import LoraConfig

    return LoraConfig(**plan.lora_config_fields())


def make_bnb_config(plan: TrainingPlan, compute_dtype: torch.dtype) -> Any:
    """The registry's ``BitsAndBytesConfig`` for the plan's combination (QLoRA: 4-bit NF4,
    double quantization), matmuls in ``compute_dtype``; None when the base is not
    quantized."""
    import torch

    fields = plan.combination.bnb_config(str(compute_dtype).removeprefix("torch."))
    if fields is None:
        return None
    from transformers import BitsAndBytesConfig

    fields["bnb_4bit_compute_dtype"] = getattr(torch, fields["bnb_4bit_compute_dtype"])
    if plan.strategy == "fsdp":
        # FSDP shards only floating-point tensors: the packed 4-bit weights are stored in the
        # compute dtype's storage (bitsandbytes' FSDP-QLoRA), and transformers then gives
        # FSDP's mixed precision that dtype too.
        fields["bnb_4bit_quant_storage"] = compute_dtype
    return BitsAndBytesConfig(**fields)


def attention_implementation(model_type: str | None) -> str:
    """sdpa (flash / memory-efficient kernels on CUDA) wherever transformers has it; eager
    for the architectures it refuses sdpa for. Gemma-2 is one: sdpa cannot soft-cap the
    attention logits (`Gemma2PreTrainedModel._supports_sdpa = False`), and eager attention
    keeps the s x s scores, which the memory model counts."""
    if model_type is None:
        return "sdpa"
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if cls is not None and getattr(cls, "_supports_sdpa", True) is False:
        return "eager"
    return "sdpa"


def model_load_kwargs(
    plan: TrainingPlan, device: str, model_type: str | None = None
) -> dict[str, Any]:
    """Keyword arguments of `AutoModelForCausalLM.from_pretrained` for a resolved plan
    (`model_type` from the model's config.json picks the attention implementation)."""
    dtype = torch_dtype(plan.precision)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": attention_implementation(model_type),
        "use_safetensors": True,
        "trust_remote_code": False,
        "quantization_config": make_bnb_config(plan, dtype),
    }
    if device == "cuda" and plan.strategy != "fsdp":
        # Straight onto the GPU; bitsandbytes quantizes while loading. Under DDP each process
        # takes the card of its local rank (torchrun's LOCAL_RANK); under FSDP no device map:
        # the model loads to CPU memory (on rank 0 only, with the other ranks on the meta
        # device) and FSDP moves each rank's shard to its card.
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return kwargs


def restore_compute_dtype(model: Any, dtype: torch.dtype) -> int:
    """Return the frozen non-4-bit parameters that `prepare_model_for_kbit_training` upcast
    to fp32 (embeddings, head, norms, biases) to the compute dtype; returns how many.

    Why: in fp32 they cost memory for nothing (a 128k-vocabulary embedding and head are
    2 GiB more on Llama-3-8B), and fp32 norm weights promote their outputs, then the MLP
    and the residual stream, to fp32, because bitsandbytes' Linear4bit answers in its
    input's dtype: QLoRA's activations would outgrow LoRA's. LlamaRMSNorm already computes
    its statistics in fp32 whatever its weight's dtype, which is the stability the upcast
    was for. The analytic memory model (advisor/memory.py) assumes this layout.
    """
    import torch

    if dtype == torch.float32:
        return 0
    changed = 0
    for param in model.parameters():
        if param.dtype == torch.float32 and param.__class__.__name__ != "Params4bit":
            param.data = param.data.to(dtype)
            changed += 1
    return changed


def optimizer_class(name: str) -> type:
    """The optimizer class behind a plan optimizer name (for LoRA+, which builds its own)."""
    if name in ("adamw_8bit", "paged_adamw_8bit"):
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit if name == "adamw_8bit" else bnb.optim.PagedAdamW8bit
    import torch

    return {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]


def build_optimizer(model: Any, plan: TrainingPlan) -> Any:
    """The LoRA+ optimizer for a LoRA+ plan, else None (the Trainer then builds
    `TRAINER_OPTIM[plan.optimizer]` itself). `plan.optimizer` must be resolved."""
    if plan.optimizer is None:
        raise ValueError("plan.optimizer is unset; resolve the plan first (resolve_plan)")
    if not plan.use_loraplus:
        return None
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model,
        optimizer_cls=optimizer_class(plan.optimizer),
        lr=plan.learning_rate,
        loraplus_lr_ratio=plan.loraplus_lr_ratio,
    )


def training_arguments(
    plan: TrainingPlan, device: str, checkpoints_dir: Path, **distributed: Any
) -> Any:
    """The Trainer's arguments for a resolved plan on ``device``, checkpoints under
    ``checkpoints_dir``. `distributed`: the arguments of a run on several processes
    (`worker.distributed.trainer_arguments`: backend, collective timeout, FSDP)."""
    from transformers import TrainingArguments

    if plan.optimizer is None:
        raise ValueError("plan.optimizer is unset; resolve the plan first (resolve_plan)")
    scheduler: str = plan.lr_scheduler
    if scheduler == "constant" and plan.warmup_ratio > 0:
        scheduler = "constant_with_warmup"
    return TrainingArguments(
        output_dir=str(checkpoints_dir),
        num_train_epochs=plan.epochs,
        max_steps=plan.max_steps or -1,
        per_device_train_batch_size=plan.micro_batch_size,
        per_device_eval_batch_size=plan.micro_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        learning_rate=plan.learning_rate,
        lr_scheduler_type=scheduler,
        warmup_steps=plan.warmup_ratio,  # below 1: a fraction of the total steps
        optim=TRAINER_OPTIM[plan.optimizer],
        bf16=plan.precision == "bf16",
        fp16=plan.precision == "fp16",
        gradient_checkpointing=plan.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        save_strategy="steps" if plan.checkpoint_steps else "no",
        save_steps=plan.checkpoint_steps or 500,
        save_total_limit=plan.checkpoint_limit,
        logging_strategy="steps",
        logging_steps=plan.logging_steps,
        eval_strategy="steps" if plan.eval_steps and plan.validation_file else "no",
        eval_steps=plan.eval_steps,
        ignore_data_skip=plan.ignore_data_skip,
        seed=plan.seed,
        data_seed=plan.seed,
        report_to=[],
        disable_tqdm=True,
        use_cpu=device == "cpu",
        # Tokenized examples are in memory; worker processes would only add start-up time.
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
        remove_unused_columns=False,
        # Counts attention_mask.sum() per micro-batch: a device-to-host sync each time.
        include_num_input_tokens_seen="non_padding",
        **distributed,
    )
