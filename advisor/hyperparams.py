"""Ready-to-use hyperparameters for a chosen combination: peft ``LoraConfig``
fields, bitsandbytes ``BitsAndBytesConfig`` fields for QLoRA, learning rate and
LoRA+'s ratio, with the source of each default."""

from __future__ import annotations

from typing import Any

from advisor.architecture import Architecture
from advisor.memory import default_lora_dropout
from advisor.profile import TrainingSettings
from advisor.variants import Combination

# LoRA+ (Hayou et al. 2024, section 5): a ratio lr_B / lr_A of 2^4 works across
# the LLaMA experiments; peft's create_loraplus_optimizer takes it as loraplus_lr_ratio.
LORAPLUS_LR_RATIO = 16.0
# With B at 16x, A's rate (the optimizer's `lr`) goes below plain LoRA's: the LoRA+ authors
# advise "slightly smaller (e.g. by a factor of 2) than typical vanilla LoRA learning
# rates" (github.com/nikhil-ghosh-berkeley/loraplus, README). loracle's own benchmark
# agrees in direction: reused at LoRA's rate LoRA+ overshot, and its best rate was 8x
# lower than LoRA's on a 2.4M-parameter model (BENCHMARKS.md).
LORAPLUS_LR_FACTOR = 0.5


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
    rank = training.lora_rank
    dropout = default_lora_dropout(combo) if lora_dropout is None else lora_dropout
    out: dict[str, Any] = {
        "lora_config": {
            "r": rank,
            # alpha = 2r keeps the update scale alpha/r at 2 whatever the rank
            # (a common default in peft examples and Raschka's LoRA experiments).
            "lora_alpha": 2 * rank,
            "lora_dropout": dropout,
            "target_modules": training.target_modules,
            "use_dora": combo.dora,
            "bias": "none",
            "task_type": "CAUSAL_LM",
        },
        "learning_rate": learning_rate(arch),
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.03,
        "optimizer": training.optimizer,
        "precision": precision,
        "gradient_checkpointing": training.gradient_checkpointing,
        "micro_batch_size": training.micro_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "seq_len": training.seq_len,
        "bnb_config": None,
        "loraplus_lr_ratio": None,
    }
    if combo.quantize_base:
        out["bnb_config"] = {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": {"bf16": "bfloat16", "fp16": "float16"}.get(
                precision, "float32"
            ),
        }
    if combo.loraplus:
        out["loraplus_lr_ratio"] = LORAPLUS_LR_RATIO
        out["learning_rate"] = learning_rate(arch) * LORAPLUS_LR_FACTOR
    return out
