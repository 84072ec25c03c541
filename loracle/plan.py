"""`TrainingPlan`: the fully described input of one fine-tuning run.

A plan is plain data (pydantic, JSON in and out) and imports no torch. Building one checks
every field and collects all problems before raising; `load_plan` turns those into one
`PlanError` whose lines each name the field, the bad value and the fix.

Three fields may be left for the worker to settle on the machine that runs the job:
`precision="auto"`, `optimizer=None` and paths relative to the working directory.
`worker.modeling.resolve_plan` settles them and returns a copy; that resolved copy is what
the run record (`plan.json`) stores.

Variants are data: a run is a combination of the registry's variants (`advisor.variants`),
`variant` plus `combine_with`, validated by the registry's one combination validator. What
each idea switches on (the 4-bit base, DoRA, LoRA+, rsLoRA) and its default hyperparameters
come from the registry; `loracle.recipe` turns the plan into library objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from advisor.errors import InvalidInput
from advisor.variants import (
    DEFAULT_LORA_RANK,
    LORA_ALPHA_PER_RANK,
    LORAPLUS_LR_RATIO,
    VARIANT_NAMES,
    Combination,
    IdeaName,
    VariantName,
    combination,
)
from loracle.errors import PlanError

Precision = Literal["auto", "bf16", "fp16", "fp32"]
Optimizer = Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd"]
Scheduler = Literal["cosine", "linear", "constant"]
Strategy = Literal["ddp", "fsdp"]


class TrainingPlan(BaseModel):
    """One fine-tuning run, every knob named. Defaults follow the QLoRA/PEFT recipes."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, protected_namespaces=()
    )

    model: str = Field(min_length=1)
    """Base model: a hub id (`org/name`) or a local directory already checked by
    `worker.model_source.resolve_model_source`. Loaded from safetensors only, never with remote
    code."""

    train_file: Path
    """JSONL training data (`text`, `prompt`/`completion` or `messages` rows; see
    `worker.data`)."""

    validation_file: Path | None = None
    """Optional JSONL in the same format; when set, the loss on it is measured once at the end
    (`eval_loss` in metrics.json), and the base model is compared with the adapter on it
    (`comparison` in metrics.json, `worker.evaluation`). Costs three forward passes over the
    file, plus, for prompt/completion rows, greedy decoding of at most 64 rows x 64 new tokens
    by each of the two models."""

    output_dir: Path
    """Run directory. Holds `checkpoints/checkpoint-<step>/` while training and
    `adapter/` (adapter + record) when the run succeeds."""

    variant: VariantName = "lora"
    """Main method, a variant of the registry (`advisor.variants`): `lora`, `qlora` (4-bit
    base, least memory), `dora` (higher quality, a little slower), `loraplus` (faster
    convergence, same memory as LoRA), `rslora` (rank-stable scale, same memory as LoRA)."""

    combine_with: list[IdeaName] = Field(default_factory=list)
    """Further ideas layered on `variant`, e.g. variant `qlora` + `["loraplus"]`. Each at most
    once, never the variant itself, never on plain `lora` (LoRA plus an idea is that idea's
    variant)."""

    epochs: float = Field(default=1.0, gt=0)
    """Passes over the training data (fractions allowed). Ignored when `max_steps` is set."""

    max_steps: int | None = Field(default=None, gt=0)
    """Optimizer steps to run; wins over `epochs` when set. Time grows linearly with it."""

    learning_rate: float = Field(default=2e-4, gt=0, le=1)
    """Peak learning rate (of lora_A for LoRA+). Too high diverges, too low learns slowly."""

    micro_batch_size: int = Field(default=1, ge=1)
    """Sequences per forward pass. Activation memory grows linearly with it."""

    gradient_accumulation_steps: int = Field(default=1, ge=1)
    """Micro-batches summed before each optimizer step. Effective batch = micro_batch_size x
    this; raises the batch without raising memory."""

    seq_len: int = Field(default=512, ge=2)
    """Tokens per sequence; longer rows are truncated. Activation memory grows at least
    linearly with it."""

    lora_rank: int = Field(default=DEFAULT_LORA_RANK, ge=1)
    """LoRA rank r. Adapter size and optimizer state grow linearly with it."""

    lora_alpha: int | None = Field(default=None, ge=1)
    """LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA). Unset:
    2 x lora_rank."""

    lora_dropout: float | None = Field(default=None, ge=0, lt=1)
    """Dropout on the adapter input (probability). Regularizes. Unset: the combination's
    default from the registry (0.05; 0 with DoRA, where dropout costs memory and time)."""

    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    """Which modules get adapters: `all-linear` (every linear layer but the output head, as in
    QLoRA) or a list of module names such as `["q_proj", "v_proj"]`. More modules, more
    adapter parameters and memory, usually better quality."""

    loraplus_lr_ratio: float = Field(default=LORAPLUS_LR_RATIO, ge=1)
    """LoRA+ only: lora_B's learning rate divided by lora_A's (the paper's lambda)."""

    checkpoint_steps: int | None = Field(default=None, ge=1)
    """Save a resumable Trainer checkpoint every this many optimizer steps (unset: none).
    Each costs a write of adapter + optimizer state to disk."""
    ignore_data_skip: bool = False
    """Resuming, start the data from its beginning rather than skip the batches the
    checkpoint's run had seen: set when a job starts from another job's checkpoint
    (`from_checkpoint`), whose data was another file."""
    eval_steps: int | None = Field(default=None, ge=1)
    """With a validation file: evaluate on all of it every `eval_steps` optimizer steps (a
    `metrics` event with valid_loss, and the checkpoints' metrics). Unset: once, at the end."""

    checkpoint_limit: int = Field(default=2, ge=1)
    """Checkpoints kept on disk (oldest deleted first). Two keeps one complete checkpoint even
    if the process dies while writing the newest."""

    seed: int = Field(default=0, ge=0)
    """Seed for adapter initialization, data order and dropout. Same plan, same machine,
    same seed: same losses."""

    precision: Precision = "auto"
    """Compute dtype: `bf16`, `fp16` or `fp32`. `auto` becomes bf16 on a CUDA card that has
    it, fp16 on one without, fp32 on CPU. Halves activation memory versus fp32."""

    optimizer: Optimizer | None = None
    """`adamw` (torch), `adamw_8bit` (bitsandbytes, ~1/4 of AdamW's state memory),
    `paged_adamw_8bit` (8-bit and pages state to CPU under memory pressure) or `sgd` (no
    state). Unset (`null`): paged_adamw_8bit for QLoRA on CUDA (the QLoRA recipe), adamw
    otherwise."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: much less activation memory, ~30% slower."""

    logging_steps: int = Field(default=1, ge=1)
    """Record loss and learning rate every this many optimizer steps."""

    lr_scheduler: Scheduler = "cosine"
    """Learning-rate schedule after warmup: `cosine` or `linear` decay to 0, or `constant`."""

    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    """Fraction of the optimizer steps spent ramping the learning rate up linearly from 0."""

    strategy: Strategy | None = None
    """How a run on several processes (one per card, started by torchrun; the worker starts
    them for a job with `resources.gpus` > 1) shares the model: `ddp`, every card holds the
    whole model and its own share of each batch (gradients averaged across cards, no memory
    saved per card); `fsdp`, weights, gradients and optimizer state sharded over the cards
    (a block's weights gathered while it runs), for a model one card cannot hold; 4-bit
    weights are then stored in the compute dtype (`bnb_4bit_quant_storage`) so that FSDP can
    shard them (FSDP-QLoRA). Unset: one process. The worker sets it from the job's placement
    (docs/memory.md says how the advisor chooses)."""

    estimate: dict[str, Any] | None = None
    """The advisor's memory estimate for this run, stored verbatim in metrics.json next to the
    measured peak."""

    @field_validator("combine_with")
    @classmethod
    def _check_combination(cls, value: list[str], info: ValidationInfo) -> list[str]:
        variant = info.data.get("variant")
        if variant not in VARIANT_NAMES:
            return value  # the variant's own error says what is wrong
        try:
            combination(variant, value)
        except InvalidInput as exc:
            raise ValueError("; ".join(p.message for p in exc.problems)) from None
        return value

    @field_validator("target_modules", mode="before")
    @classmethod
    def _check_targets(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "all-linear":
            raise ValueError(
                "is neither 'all-linear' nor a list; use 'all-linear' or a list of module "
                f"names such as [{value!r}]"
            )
        if isinstance(value, list):
            if not value:
                raise ValueError("is empty; name at least one module or use 'all-linear'")
            bad = [name for name in value if not isinstance(name, str) or not name.strip()]
            if bad:
                raise ValueError(f"holds {bad}, which are not module names; remove them")
            if len(set(value)) != len(value):
                raise ValueError("names a module twice; list each module once")
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> TrainingPlan:
        # Filled in, not asked for: keep `model_dump(exclude_unset=True)` truthful.
        if self.lora_alpha is None:
            self.lora_alpha = LORA_ALPHA_PER_RANK * self.lora_rank
            self.model_fields_set.discard("lora_alpha")
        if self.lora_dropout is None:
            self.lora_dropout = self.combination.lora_dropout
            self.model_fields_set.discard("lora_dropout")
        return self

    @property
    def combination(self) -> Combination:
        """The validated combination of `variant` and `combine_with`, in the registry's order."""
        return combination(self.variant, self.combine_with)

    @property
    def ideas(self) -> frozenset[str]:
        """Every idea this run uses: `variant` (unless plain `lora`) plus `combine_with`."""
        return self.combination.names

    @property
    def quantize_4bit(self) -> bool:
        """Whether the base model is loaded in 4-bit NF4 (QLoRA)."""
        return self.combination.quantize_base

    @property
    def use_dora(self) -> bool:
        """Whether adapters are DoRA (magnitude vector + LoRA on the direction)."""
        return self.combination.dora

    @property
    def use_loraplus(self) -> bool:
        """Whether lora_B gets `loraplus_lr_ratio` times lora_A's learning rate."""
        return self.combination.loraplus

    def lora_config_fields(self) -> dict[str, Any]:
        """peft ``LoraConfig``'s keyword arguments for this plan (the registry's, with the
        plan's rank, alpha, dropout and targets)."""
        return self.combination.lora_config(
            self.lora_rank, self.lora_alpha, self.lora_dropout, self.target_modules
        )


def _format_error(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "plan"
    if error["type"] == "extra_forbidden":
        return (
            f"{field}: got {error['input']!r}; unknown field, check the spelling against "
            "TrainingPlan's fields"
        )
    if error["type"] == "missing":
        return f"{field}: missing; this field is required"
    message = error["msg"].removeprefix("Value error, ")
    return f"{field}: got {error['input']!r}; {message}"


def load_plan(source: dict[str, Any] | str | Path) -> TrainingPlan:
    """Build a plan from a dict or a JSON file, raising one `PlanError` listing every problem.

    A file may hold a bare plan or a run record written by `worker.artifacts` (its `plan`
    key), so `python -m worker train --plan <adapter>/plan.json` reruns a finished run.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PlanError([f"plan file {str(path)!r} does not exist; check the path"]) from None
        except json.JSONDecodeError as exc:
            raise PlanError(
                [f"plan file {str(path)!r} is not JSON ({exc}); fix the file"]
            ) from None
        if isinstance(data, dict) and "command" in data and isinstance(data.get("plan"), dict):
            data = data["plan"]
    else:
        data = source
    if not isinstance(data, dict):
        raise PlanError([f"plan: got {type(data).__name__}; a plan is a JSON object"])
    try:
        return TrainingPlan.model_validate(data)
    except ValidationError as exc:
        raise PlanError([_format_error(e) for e in exc.errors()]) from None
