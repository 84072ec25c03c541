"""Response shapes of /v1/recommendations and /v1/estimates."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class BreakdownOut(BaseModel):
    weights: float = Field(description="GiB of base weights (NF4 + fp32 rest for QLoRA).")
    adapter: float = Field(description="GiB of trainable adapter parameters (fp32).")
    gradients: float = Field(description="GiB of gradients of the trainable parameters.")
    optimizer: float = Field(description="GiB of optimizer state.")
    activations: float = Field(description="GiB of activations, logits and temporaries at peak.")
    overhead: float = Field(description="GiB beyond the peak: CUDA context + allocator slack.")


class EstimateOut(BaseModel):
    variant: str
    combine_with: list[str]
    method: Literal["analytic", "trace"]
    peak_allocated_gib: float = Field(
        description="Peak memory held by tensors in a training step "
        "(what torch.cuda.max_memory_allocated reports)."
    )
    reserved_gib: float = Field(description="Peak reserved by PyTorch's caching allocator.")
    total_gib: float = Field(
        description="What the card must have free: the peak plus CUDA context and slack."
    )
    peak_phase: Literal["forward", "backward", "optimizer"]
    breakdown: BreakdownOut
    trainable_params: int
    trainable_percent: float
    gpu_count: int
    assumptions: list[str]
    fits: bool | None = Field(description="Null when no hardware was given.")
    headroom_gib: float | None


class ModelSummaryOut(BaseModel):
    name: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    total_params: int
    block_linear_params: int


class EstimateResponse(EstimateOut):
    model: ModelSummaryOut
    precision: str
    notes: list[str]


class CardOut(BaseModel):
    id: str | None
    name: str | None
    memory_gib: float
    bf16: bool
    count: int


class PathStepOut(BaseModel):
    question: str
    answer: Literal["yes", "no"]
    evidence: str
    decides: str | None = Field(description="The variant this answer chose, if it chose one.")


class LoraConfigOut(BaseModel):
    r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: str | list[str]
    use_dora: bool
    bias: str
    task_type: str


class BnbConfigOut(BaseModel):
    load_in_4bit: bool
    bnb_4bit_quant_type: str
    bnb_4bit_use_double_quant: bool
    bnb_4bit_compute_dtype: str


class HyperparametersOut(BaseModel):
    lora_config: LoraConfigOut = Field(description="Fields of peft.LoraConfig.")
    bnb_config: BnbConfigOut | None = Field(
        description="Fields of transformers.BitsAndBytesConfig (QLoRA only)."
    )
    learning_rate: float
    loraplus_lr_ratio: float | None = Field(description="LoRA+ only: lr_B / lr_A.")
    lr_scheduler: str
    warmup_ratio: float
    optimizer: str
    precision: str
    gradient_checkpointing: bool
    micro_batch_size: int
    gradient_accumulation_steps: int
    seq_len: int


class RemedyOut(BaseModel):
    change: str
    settings: dict[str, Any]
    estimate: EstimateOut


class RecommendationOut(BaseModel):
    variant: Literal["lora", "qlora", "dora", "loraplus"]
    combine_with: list[str]
    label: str
    fits: bool
    headroom_gib: float
    model: ModelSummaryOut
    hardware: CardOut
    precision: str
    decision_path: list[PathStepOut]
    estimate: EstimateOut = Field(description="Memory of the recommended combination.")
    estimates: dict[str, EstimateOut] = Field(
        description="One entry per variant (lora, qlora, dora, loraplus), whatever is recommended."
    )
    hyperparameters: HyperparametersOut
    remedies: list[RemedyOut]
    verdict: str | None = Field(description="Set when no single card of this size can train it.")
    notes: list[str]
