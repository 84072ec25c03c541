"""Ready-to-use hyperparameters for a chosen combination: peft ``LoraConfig`` fields,
bitsandbytes ``BitsAndBytesConfig`` fields for QLoRA, learning rate and LoRA+'s ratio, with
the source of each default. What each variant sets comes from the registry
(`advisor.variants`); the worker builds its configs from the same registry functions."""

from __future__ import annotations

from typing import Any

from advisor.architecture import Architecture
from advisor.profile import TrainingSettings
from advisor.variants import Combination

# The compute dtype's name in torch for each precision (BitsAndBytesConfig's
# bnb_4bit_compute_dtype).
COMPUTE_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
WARMUP_RATIO = 0.03
LR_SCHEDULER = "cosine"


def learning_rate(arch: Architecture) -> float:
    """QLoRA (Dettmers et al. 2023, appendix B.2) trains 7B-13B models at 2e-4 and
    33B-65B at 1e-4; we follow it by parameter count."""
    return 2e-4 if arch.total_params < 20e9 else 1e-4


def suggest(
    arch: Architecture,
    training: TrainingSettings,
    combo: Combination,
    precision: str,
    lora_dropout: float | None = None,
) -> dict[str, Any]:
    return {
        "lora_config": combo.lora_config(
            training.lora_rank, dropout=lora_dropout, target_modules=training.target_modules
        ),
        "learning_rate": learning_rate(arch) * combo.learning_rate_factor,
        "lr_scheduler": LR_SCHEDULER,
        "warmup_ratio": WARMUP_RATIO,
        "optimizer": training.optimizer,
        "precision": precision,
        "gradient_checkpointing": training.gradient_checkpointing,
        "micro_batch_size": training.micro_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "seq_len": training.seq_len,
        "bnb_config": combo.bnb_config(COMPUTE_DTYPES[precision]),
        "loraplus_lr_ratio": combo.loraplus_lr_ratio,
    }
