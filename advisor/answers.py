"""What the advisor answers, typed: the bodies of POST /v1/recommendations and
POST /v1/estimates, field by field. The advisor builds these; the API declares them as its
response models, so the OpenAPI schema documents exactly what is returned."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from advisor.variants import LORA_CONFIG_SWITCHES, VARIANT_NAMES, VariantName


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True)


class Breakdown(_Answer):
    weights: float = Field(description="GiB of base weights (NF4 + fp32 rest for QLoRA).")
    adapter: float = Field(description="GiB of trainable adapter parameters (fp32).")
    gradients: float = Field(description="GiB of gradients of the trainable parameters.")
    optimizer: float = Field(description="GiB of optimizer state.")
    activations: float = Field(description="GiB of activations, logits and temporaries at peak.")
    overhead: float = Field(
        description="GiB beyond the step's peak: what the allocator reserves over the whole "
        "run (its highest phase, rounding, fragmentation, cuBLAS workspaces) and the CUDA "
        "context."
    )


class WholeRun(_Answer):
    """What the job holds from start to end, in GiB, under the allocator setting."""

    allocator: Literal["expandable_segments", "default"] = Field(
        description="The caching allocator's setting the figures are for (the worker trains "
        "with expandable_segments)."
    )
    reserved_by: Literal["load", "training", "evaluation"] = Field(
        description="The phase whose reserve is the run's highest."
    )
    load_allocated: float = Field(
        description="Tensors at the model load's peak (QLoRA: peft's fp32 upcast of the "
        "embeddings, head and norms before the worker casts them back)."
    )
    load_reserved: float
    training_allocated: float = Field(description="The step's peak at the longest batch.")
    training_reserved: float
    evaluation_allocated: float | None = Field(
        default=None, description="The no-grad evaluation pass, when there is a validation set."
    )
    evaluation_reserved: float | None = None
    rounding: float = Field(description="Blocks rounded to segments or pages, highest phase.")
    fragmentation: float = Field(
        description="Freed but reserved in the highest phase: holes freed temporaries leave, "
        "and under the default allocator slivers that batches of other lengths left."
    )
    cublas_workspaces: float
    cuda_context: float = Field(description="Outside the allocator.")


class Estimate(_Answer):
    variant: str
    combine_with: list[str]
    method: Literal["analytic", "trace"]
    peak_allocated_gib: float = Field(
        description="Peak memory held by tensors in a training step at the longest padded "
        "batch (what torch.cuda.max_memory_allocated reports)."
    )
    reserved_gib: float = Field(
        description="The whole run's peak reserved by PyTorch's caching allocator (what "
        "torch.cuda.max_memory_reserved reports at the end of the job)."
    )
    total_gib: float = Field(
        description="What the card must have free for the whole run: reserved plus the CUDA "
        "context."
    )
    peak_phase: Literal["forward", "backward", "optimizer"]
    breakdown: Breakdown
    whole_run: WholeRun
    margin: float = Field(
        description="Fit margin: fits means total_gib x (1 + margin) <= the card's memory."
    )
    margin_source: str = Field(description="Where the margin comes from.")
    trainable_params: int
    trainable_percent: float
    gpu_count: int
    strategy: Literal["ddp", "fsdp"] | None = Field(
        default=None,
        description="On several cards, how the worker runs the job there and this estimate "
        "models it, per card: ddp (each card holds the whole run) when one card holds it, "
        "else fsdp (weights, gradients and optimizer state sharded); null on one card.",
    )
    assumptions: list[str]
    fits: bool | None = Field(
        description="total_gib x (1 + margin) fits the card's memory; null when no hardware "
        "was given."
    )
    headroom_gib: float | None = Field(
        description="The card's memory less total_gib x (1 + margin)."
    )


class ModelSummary(_Answer):
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


class EstimateAnswer(Estimate):
    model: ModelSummary
    precision: str
    notes: list[str]


class Note(_Answer):
    """One item of advice: a short sentence with its figures, and where they come from."""

    text: str = Field(
        description='One short sentence with its figures, e.g. "LoRA+ is memory-neutral: the '
        "same tensors as LoRA (16.9 GiB), only B's learning rate is 16x A's.\""
    )
    source: str = Field(
        description="Where the figures come from: a paper (with its arXiv id), loracle's own "
        "measurements (BENCHMARKS.md, with the run's setup), the design document, or the "
        "GPU catalog."
    )


class CardSummary(_Answer):
    id: str | None
    name: str | None
    memory_gib: float
    bf16: bool
    count: int


class PathStep(_Answer):
    question: str
    answer: Literal["yes", "no"]
    evidence: str
    decides: str | None = Field(description="The variant this answer chose, if it chose one.")


class _LoraConfigBase(_Answer):
    r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: str | list[str]
    bias: str
    task_type: str


# The switches come from the registry: a variant that sets a new LoraConfig field adds it here.
_SWITCHES: dict[str, Any] = {
    key: (bool, Field(description=f"peft LoraConfig.{key}")) for key in LORA_CONFIG_SWITCHES
}
LoraConfigFields = create_model("LoraConfigFields", __base__=_LoraConfigBase, **_SWITCHES)


class BnbConfigFields(_Answer):
    load_in_4bit: bool
    bnb_4bit_quant_type: str
    bnb_4bit_use_double_quant: bool
    bnb_4bit_compute_dtype: str


class Hyperparameters(_Answer):
    lora_config: LoraConfigFields = Field(description="Fields of peft.LoraConfig.")
    bnb_config: BnbConfigFields | None = Field(
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


class Remedy(_Answer):
    change: str
    settings: dict[str, Any]
    estimate: Estimate


class Recommendation(_Answer):
    variant: VariantName
    combine_with: list[str]
    label: str
    fits: bool
    headroom_gib: float
    model: ModelSummary
    hardware: CardSummary
    precision: str
    decision_path: list[PathStep]
    estimate: Estimate = Field(description="Memory of the recommended combination.")
    estimates: dict[str, Estimate] = Field(
        description=f"One entry per variant ({', '.join(VARIANT_NAMES)}), whatever is recommended."
    )
    hyperparameters: Hyperparameters
    remedies: list[Remedy]
    verdict: str | None = Field(description="Set when no single card of this size can train it.")
    notes: list[Note] = Field(
        description="The trade-offs of each variant here, one short item each with its source."
    )
