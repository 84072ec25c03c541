"""How a model is loaded for training on this machine: the device, the optimizer that runs
here, the resolved plan, and the model with its adapters. Nothing here trains.

What each object is built from (LoraConfig, BitsAndBytesConfig, load arguments, the
optimizer) is decided once in `loracle.recipe`, which the memory tracer uses too. This module
settles what only the machine that runs the job can know:

- Device (`detect_device`): CUDA when a GPU is visible, else the CPU.
- Optimizer (`resolve_optimizer`): the recipe's default; off CUDA, paged optimizers have
  nothing to page, so `paged_adamw_8bit` runs as `adamw_8bit`; a bitsandbytes 8-bit optimizer
  that fails a one-step probe on this device falls back to `adamw`. Every fallback is returned
  as a warning and lands in the run record.
- Model source: checked again (`loracle.model_source`) before anything loads; weights load
  with `use_safetensors=True` and `trust_remote_code=False`, always.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from loracle.model_source import is_local, refuse_remote_code
from loracle.plan import TrainingPlan
from loracle.recipe import (
    default_optimizer,
    make_lora_config,
    model_load_kwargs,
    resolve_precision,
    restore_compute_dtype,
    torch_dtype,
)

Device = Literal["cuda", "cpu"]

# ---------------------------------------------------------------------------------------------
# Device, precision, optimizer
# ---------------------------------------------------------------------------------------------


def detect_device() -> Device:
    """`cuda` when a CUDA GPU is visible, else `cpu`."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bnb_8bit_optimizer_works(device: str) -> bool:
    """Probe: can bitsandbytes' 8-bit AdamW take one step on `device`? (4096 elements: the
    smallest tensor bitsandbytes keeps in 8 bits.)"""
    try:
        import bitsandbytes as bnb
        import torch

        param = torch.nn.Parameter(torch.zeros(4096, device=device))
        param.grad = torch.ones_like(param)
        bnb.optim.AdamW8bit([param], lr=1e-3).step()
    except Exception:
        return False
    return True


def resolve_optimizer(plan: TrainingPlan, device: str) -> tuple[str, list[str]]:
    """The optimizer this run will use on `device`, and the warnings of any fallback."""
    name = default_optimizer(plan, device)
    warnings: list[str] = []
    if name == "paged_adamw_8bit" and device != "cuda":
        warnings.append(
            f"optimizer: paged_adamw_8bit pages state between GPU and CPU memory; on {device} "
            "there is nothing to page, so adamw_8bit runs instead"
        )
        name = "adamw_8bit"
    if name == "adamw_8bit" and not bnb_8bit_optimizer_works(device):
        warnings.append(
            f"optimizer: bitsandbytes' 8-bit AdamW does not run on {device} here; adamw (torch, "
            "32-bit state, 4x the optimizer memory) runs instead"
        )
        name = "adamw"
    return name, warnings


def resolve_plan(plan: TrainingPlan, device: str) -> tuple[TrainingPlan, list[str]]:
    """Settle what the plan left open for `device`: precision, optimizer, absolute paths.

    Returns the resolved copy (what plan.json records) and the warnings of any fallback.
    """
    optimizer, warnings = resolve_optimizer(plan, device)
    model = plan.model
    if is_local(model):
        model = str(Path(model).expanduser().resolve())
    resolved = plan.model_copy(
        update={
            "model": model,
            "precision": resolve_precision(plan.precision, device),
            "optimizer": optimizer,
            "train_file": plan.train_file.expanduser().resolve(),
            "validation_file": plan.validation_file.expanduser().resolve()
            if plan.validation_file
            else None,
            "output_dir": plan.output_dir.expanduser().resolve(),
        }
    )
    return resolved, warnings


# ---------------------------------------------------------------------------------------------
# Model construction
# ---------------------------------------------------------------------------------------------


def load_model_and_tokenizer(plan: TrainingPlan, device: str):
    """Base model with adapters attached, ready for the Trainer, and its tokenizer.

    `plan` must be resolved (`resolve_plan`). For QLoRA the quantized model first goes
    through `peft.prepare_model_for_kbit_training` (freezes the base, enables input
    gradients, wires gradient checkpointing), then `restore_compute_dtype` returns the
    parameters it upcast to fp32 to the compute dtype. The tokenizer's pad token is its eos
    when it has none. Returns `(peft_model, tokenizer)`.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if is_local(plan.model):
        refuse_remote_code(plan.model)
    tokenizer = AutoTokenizer.from_pretrained(plan.model, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.from_pretrained(plan.model, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        plan.model, **model_load_kwargs(plan, device, config.model_type)
    )
    if plan.quantize_4bit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=plan.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        restore_compute_dtype(model, torch_dtype(plan.precision))
    model = get_peft_model(model, make_lora_config(plan))
    return model, tokenizer


def load_for_inference(plan: TrainingPlan, device: str, card: int = 0):
    """The run's base model as its training loaded it (same dtype, same attention, and for
    QLoRA the same NF4 BitsAndBytesConfig, quantized while loading), for generation: on
    `device`, on visible card `card` when that is cuda, in eval mode. `plan` is the resolved
    plan the run recorded (its plan.json). Returns the model; the tokenizer is
    `load_tokenizer`'s."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if is_local(plan.model):
        refuse_remote_code(plan.model)
    config = AutoConfig.from_pretrained(plan.model, trust_remote_code=False)
    kwargs = model_load_kwargs(plan, device, config.model_type)
    if device == "cuda":
        kwargs["device_map"] = {"": card}  # one card, not the LOCAL_RANK of a training rank
    model = AutoModelForCausalLM.from_pretrained(plan.model, **kwargs)
    model.eval()
    return model


def load_tokenizer(model: str):
    """The model's tokenizer, with its eos as the pad token when it has none (as training)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
