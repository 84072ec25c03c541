"""The profile a user sends: hardware, model, training settings and goal.

These field names are the public contract of ``POST /v1/recommendations`` and
``POST /v1/estimates``. Each field is documented once, here: type, unit, and
what it does to memory, speed and quality. Validation messages name the field,
the bad value and the fix.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from advisor.serving import SERVER_NAMES, ServeWith
from advisor.variants import (
    DEFAULT_LORA_RANK,
    IDEA_NAMES,
    VARIANT_NAMES,
    IdeaName,
    VariantName,
)

Optimizer = Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd"]
Precision = Literal["bf16", "fp16", "fp32"]
Priority = Literal["memory", "quality", "speed", "none"]


def non_finite_paths(value: Any, limit: int = 4) -> list[str]:
    """Dotted paths (``rope_scaling.factor``, ``layers[3]``) of the NaN and infinite floats
    inside a JSON value, at most ``limit``. Iterative: a deeply nested body cannot exhaust
    the interpreter's stack here."""
    found: list[str] = []
    stack: list[tuple[str, Any]] = [("", value)]
    while stack and len(found) < limit:
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            found.append(path or "the top level")
        elif isinstance(item, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
    return sorted(found)


# The most micro batches per optimizer step a request may ask for (and a remedy may suggest).
MAX_GRADIENT_ACCUMULATION = 65536


class _Strict(BaseModel):
    """Base of every request model: unknown fields, wrong JSON types and non-finite numbers
    are refused rather than coerced.

    ``strict``: an integer field takes only a JSON integer (not ``true``, ``"2048"`` or
    ``2048.0``), a boolean only ``true``/``false`` (not ``"yes"`` or ``1``); a float field
    still takes a JSON integer. ``allow_inf_nan=False``: ``NaN`` and ``Infinity``, which
    Python's and pydantic's JSON parsers accept though JSON has neither, are refused.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Hardware(_Strict):
    """The card(s) the job would run on. Give ``gpu`` (a catalog id) or ``gpu_memory_gib``."""

    gpu: str | None = Field(
        default=None,
        description=(
            "GPU catalog id such as 't4', 'rtx-4090', 'a100-80gb', 'h100-80gb' (case, spaces "
            "and punctuation are forgiven). Supplies the memory and whether the card has bf16. "
            "See GET /v1/catalog/gpus."
        ),
        examples=["rtx-4090"],
    )
    gpu_memory_gib: float | None = Field(
        default=None,
        gt=0,
        le=4096,
        description=(
            "Memory of one card in GiB (2^30 bytes), as nvidia-smi reports it. Overrides the "
            "catalog figure when both are given; alone, it describes an uncatalogued card "
            "(assumed to support bf16)."
        ),
    )
    gpu_count: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Cards in the machine. Above 1 the estimate is per card of the run the worker "
            "starts (one torchrun rank per card): DDP, every card holding the whole run, when "
            "one card holds it, else FSDP, weights, gradients and optimizer state sharded "
            "(activations are each card's own micro batch's). The estimate's strategy names "
            "which (docs/memory.md, 'Several cards')."
        ),
    )


class ModelRef(_Strict):
    """The base model: a catalog name or a Hugging Face ``config.json``."""

    name: str | None = Field(
        default=None,
        description="Model id from the catalog (GET /v1/catalog/models), e.g. "
        "'meta-llama/Llama-2-7b-hf'. Matching is forgiving of case and of the org prefix.",
        examples=["meta-llama/Llama-2-7b-hf"],
    )
    config: dict[str, Any] | None = Field(
        default=None,
        description="A Hugging Face causal-LM config.json, for any model not in the catalog "
        "(Llama, Mistral, Qwen2/3, Gemma/Gemma-2, Phi-3 families and Llama-like others).",
    )

    @field_validator("config")
    @classmethod
    def _finite(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Checked here, before anything serialises the request: pydantic writes NaN as
        # null, which would turn a bad number into a misleading "is missing".
        bad = non_finite_paths(value) if value is not None else []
        if bad:
            where = ", ".join(bad[:3]) + (" and more" if len(bad) > 3 else "")
            raise ValueError(
                f"holds NaN or Infinity at {where}; JSON numbers must be finite: give the "
                "number from the model's config.json, or remove the key"
            )
        return value

    @model_validator(mode="after")
    def _one_of(self) -> ModelRef:
        if (self.name is None) == (self.config is None):
            raise ValueError(
                "give exactly one of model.name (a catalog id) or model.config (a config.json)"
            )
        return self


TargetModules = Literal["all-linear"] | Annotated[list[str], Field(min_length=1)]


class TrainingSettings(_Strict):
    """How the job trains. Every field has a default that suits a first run."""

    seq_len: int = Field(
        default=2048,
        ge=1,
        le=1_048_576,
        description="Tokens per sequence. Activation and logits memory grow linearly with it.",
    )
    micro_batch_size: int = Field(
        default=1,
        ge=1,
        le=4096,
        description="Sequences per forward/backward pass. Activations grow linearly with it; "
        "the effective batch is micro_batch_size x gradient_accumulation_steps x gpus.",
    )
    gradient_accumulation_steps: int = Field(
        default=1,
        ge=1,
        le=MAX_GRADIENT_ACCUMULATION,
        description="Micro batches per optimizer step. Costs no activation memory; gradients "
        "then live across micro batches.",
    )
    gradient_checkpointing: bool = Field(
        default=True,
        description="Keep only each block's input in the forward pass and recompute the rest "
        "in backward: activations fall from every tensor of every block to one per block, "
        "for about 30% more step time.",
    )
    lora_rank: int = Field(
        default=DEFAULT_LORA_RANK,
        ge=1,
        le=4096,
        description="LoRA rank r. Adapter parameters, their gradients and optimizer state grow "
        "linearly with it; quality gains flatten beyond 16-64 for most tasks.",
    )
    target_modules: TargetModules = Field(
        default="all-linear",
        description="'all-linear' (every linear layer of the blocks, as in QLoRA) or a list of "
        "module names such as ['q_proj', 'v_proj']. More targets: more adapter memory, "
        "usually better quality.",
    )
    optimizer: Optimizer = Field(
        default="adamw",
        description="adamw: 8 bytes of fp32 state per trainable parameter; adamw_8bit and "
        "paged_adamw_8bit (bitsandbytes): 2 bytes; paged also survives memory spikes by "
        "paging to the host; sgd: none.",
    )
    precision: Precision = Field(
        default="bf16",
        description="Compute precision. bf16 or fp16 halve weight and activation memory against "
        "fp32; a card without bf16 (T4, V100) is planned in fp16.",
    )

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: Any) -> Any:
        if isinstance(value, list):
            bad = [v for v in value if not isinstance(v, str) or not v.strip()]
            if bad:
                raise ValueError("module names must be non-empty strings")
            if len(set(value)) != len(value):
                raise ValueError("module names must not repeat")
        return value


class Goal(_Strict):
    """What matters most for this job: the seed's decision-tree questions."""

    priority: Priority = Field(
        default="none",
        description="memory: fit on the smallest card (QLoRA); quality: close the gap to full "
        "fine-tuning (DoRA, when LoRA shows a gap); speed: reach target quality in fewer "
        "steps (LoRA+); none: plain LoRA.",
    )
    lora_quality_gap: bool = Field(
        default=False,
        description="True when plain LoRA was tried and fell short of the quality needed. With "
        "priority 'quality' this is what makes DoRA worth its extra step time.",
    )
    serve_with: ServeWith | None = Field(
        default=None,
        description=f"Where the adapter will be served: {', '.join(SERVER_NAMES)}; leave it "
        "out when not known (the advice is then the same as before the field existed). "
        "vllm, sglang and llama.cpp cannot load DoRA adapters as trained: DoRA stays only "
        "when the goal asks for it (priority 'quality' with a LoRA quality gap), with a note "
        "to merge before serving. vllm loads adapters up to its --max-lora-rank (at most "
        "512): a larger training.lora_rank is lowered to 512, and the notes name the flag's "
        "value. sglang and llama.cpp scale rsLoRA adapters wrongly, so rsLoRA is not "
        "suggested there. merged: any variant, merged into the 16-bit base "
        "(advisor/serving.py has each fact and its source).",
    )


class Profile(_Strict):
    """Body of POST /v1/recommendations."""

    hardware: Hardware = Field(default_factory=Hardware)
    model: ModelRef
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    goal: Goal = Field(default_factory=Goal)


class EstimateRequest(_Strict):
    """Body of POST /v1/estimates: one variant's memory."""

    model: ModelRef
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    variant: VariantName = Field(default="lora", description=f"One of {', '.join(VARIANT_NAMES)}.")
    combine_with: list[IdeaName] = Field(
        default_factory=list,
        description=f"Further ideas ({', '.join(IDEA_NAMES)}) layered on `variant`, e.g. "
        "variant 'qlora' with ['dora']. Not on 'lora': LoRA plus an idea is that idea's "
        "variant.",
    )
    hardware: Hardware | None = Field(
        default=None, description="When given, the answer says whether it fits."
    )
    method: Literal["analytic", "trace"] = Field(
        default="analytic",
        description="analytic: the closed-form model (milliseconds). trace: run one real "
        "training step of this architecture on PyTorch's meta device and measure it.",
    )
