"""Request and response shapes of /v1/jobs (after OpenAI's fine-tuning API where it fits)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from advisor.profile import Goal, Hardware
from advisor.variants import IdeaName, VariantName, VariantOrAuto

JobStatus = Literal["queued", "running", "paused", "succeeded", "failed", "cancelled"]
# OpenAI's statuses: a file is validated at submission (never `validating_files` here).

# Request bodies take JSON as typed, like advisor.profile's models: "3e-4", "64", "yes" and 1
# for true are refused rather than guessed at, and so are NaN and Infinity (which Python's
# JSON parser accepts though JSON has neither); an unknown key is a typo to report.
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Hyperparameters(BaseModel):
    """Training knobs; each unset one takes the worker's documented default
    (loracle/plan.py TrainingPlan)."""

    model_config = STRICT

    epochs: float | None = Field(default=None, gt=0, le=1000)
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    micro_batch_size: int | None = Field(default=None, ge=1, le=4096)
    gradient_accumulation_steps: int | None = Field(default=None, ge=1, le=65536)
    seq_len: int | None = Field(default=None, ge=2, le=1_048_576)
    lora_rank: int | None = Field(default=None, ge=1, le=4096)
    lora_alpha: int | None = Field(default=None, ge=1, le=1_000_000)
    lora_dropout: float | None = Field(default=None, ge=0, lt=1)
    target_modules: Literal["all-linear"] | list[str] | None = None
    loraplus_lr_ratio: float | None = Field(default=None, ge=1, le=1e6)
    checkpoint_steps: int | None = Field(default=None, ge=1)
    eval_steps: int | None = Field(
        default=None,
        ge=1,
        description="With a validation file: its loss every eval_steps steps (metric events, "
        "checkpoint metrics); unset, once at the end.",
    )
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    precision: Literal["auto", "bf16", "fp16", "fp32"] | None = None
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd"] | None = None
    gradient_checkpointing: bool | None = None
    lr_scheduler: Literal["cosine", "linear", "constant"] | None = None
    warmup_ratio: float | None = Field(default=None, ge=0, lt=1)
    logging_steps: int | None = Field(default=None, ge=1)
    # OpenAI's three, beside loracle's own knobs; each may be "auto" (the advisor's choice).
    n_epochs: int | Literal["auto"] | None = Field(
        default=None, description="OpenAI's: passes over the data (loracle's `epochs`)."
    )
    batch_size: int | Literal["auto"] | None = Field(
        default=None,
        description="OpenAI's: the effective batch, micro_batch_size x "
        "gradient_accumulation_steps. Alone, the micro batch is the largest divisor of it "
        "up to the plan's default micro batch, and the rest is accumulation.",
    )
    learning_rate_multiplier: float | Literal["auto"] | None = Field(
        default=None,
        description="OpenAI's: multiplies the advisor's suggested learning rate for the "
        "model and variant (the rate POST /v1/recommendations answers).",
    )

    @model_validator(mode="after")
    def _ranges(self) -> Hyperparameters:
        for name, low, high in (
            ("n_epochs", 1, 1000),
            ("batch_size", 1, 4096 * 65536),
        ):
            value = getattr(self, name)
            if isinstance(value, int) and not low <= value <= high:
                raise ValueError(f"{name} must be 'auto' or an integer from {low} to {high}")
        lrm = self.learning_rate_multiplier
        if isinstance(lrm, float) and not 0 < lrm <= 1000:
            raise ValueError("learning_rate_multiplier must be 'auto' or a number in (0, 1000]")
        return self


class JobProfile(BaseModel):
    """What the advisor needs beyond the job for variant 'auto': the card and the goal."""

    model_config = STRICT

    hardware: Hardware | None = None
    goal: Goal = Field(default_factory=Goal)


class Resources(BaseModel):
    """The hardware a job asks for."""

    model_config = STRICT

    gpus: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Cards the job trains on: 1, or N for one data-parallel (DDP) or sharded "
        "(FSDP) run over N cards of one worker. The advisor's remedy 'use N cards' is this.",
    )


class Supervised(BaseModel):
    model_config = STRICT

    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(BaseModel):
    """OpenAI's `method`: loracle trains the supervised one; the others are refused by name."""

    model_config = STRICT

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: Supervised | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _supervised_only(self) -> Method:
        if self.type != "supervised":
            raise ValueError(
                f"{self.type!r} is not trained by loracle yet: it trains supervised "
                "fine-tuning only; send method.type 'supervised' (or leave method out)"
            )
        if self.dpo is not None or self.reinforcement is not None:
            raise ValueError("method.type is 'supervised': remove method.dpo/reinforcement")
        return self


class JobCreate(BaseModel):
    model_config = STRICT

    model: str = Field(
        min_length=1,
        max_length=4096,
        description="A Hugging Face hub id ('org/name') or the path of a local model "
        "directory inside one of LORACLE_MODEL_ROOTS.",
    )
    training_file: str = Field(
        pattern=r"^file-[0-9a-f]{24}$", description="A file id from POST /v1/files."
    )
    validation_file: str | None = Field(default=None, pattern=r"^file-[0-9a-f]{24}$")
    variant: VariantOrAuto = Field(
        default="auto",
        description="'auto' lets the advisor choose from the profile (and stores its decision).",
    )
    combine_with: list[IdeaName] = Field(default_factory=list)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    profile: JobProfile | None = None
    resources: Resources = Field(default_factory=Resources)
    placement: Literal["now", "wait"] = Field(
        default="now",
        description="'now': refused (422) when no registered card can hold the job. 'wait': "
        "queued until a worker whose card holds it registers.",
    )

    suffix: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="OpenAI's: up to 64 letters, digits, '.', '_' or '-', added to "
        "fine_tuned_model.",
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**31 - 1, description="OpenAI's; hyperparameters.seed too."
    )
    metadata: dict[str, str] | None = Field(
        default=None, description="OpenAI's: up to 16 string pairs (keys 64, values 512)."
    )
    method: Method | None = None
    allow_variant_change: bool = Field(
        default=False,
        description="Whether a run that runs out of memory on its card may be retried as QLoRA "
        "(the base in 4-bit NF4, the job's other ideas kept), after the retries that keep the "
        "variant (gradient checkpointing, a smaller micro batch with more accumulation) did "
        "not fit. False: a named variant is kept and the job fails with out_of_memory "
        "instead. Variant 'auto' allows it whatever this says (the advisor chose the variant). "
        "Nothing else depends on it.",
    )
    from_checkpoint: str | None = Field(
        default=None,
        pattern=r"^ftckpt-[0-9a-f]{24}-[0-9]{1,9}$",
        description="A checkpoint id of an earlier job of yours (GET .../checkpoints): this "
        "job starts from its adapter, optimizer, scheduler and step, on its own data. The "
        "model, variant, lora_rank and target_modules must be the earlier job's; max_steps "
        "counts from the earlier job's start.",
    )

    @model_validator(mode="after")
    def _metadata(self) -> JobCreate:
        meta = self.metadata or {}
        if len(meta) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in meta.items()):
            raise ValueError(
                "metadata holds at most 16 pairs, keys of up to 64 characters and values of "
                "up to 512"
            )
        return self

    @model_validator(mode="after")
    def _auto_alone(self) -> JobCreate:
        if self.variant == "auto" and self.combine_with:
            raise ValueError(
                "combine_with is chosen by the advisor when variant is 'auto'; remove it or "
                "name the variant"
            )
        return self


class ErrorInfo(BaseModel):
    """Why a job failed: OpenAI's `code`, `message` and `param`; `type` is the code too."""

    code: str = Field(
        description="What failed: `out_of_memory` (the run did not fit its card on any of its "
        "LORACLE_OOM_RETRIES retries; the message names the measured peak, what was tried and "
        "the remedies left), `model_not_found`, `model_gated`, `model_not_usable`, "
        "`model_not_cached` or `hub_unreachable` (the model could not be loaded from the hub), "
        "`WorkerLost` (its worker died on every attempt), `FileStoreUnreachable` (a remote "
        "worker could not move its files), or the class name of another error the run raised."
    )
    message: str
    param: str | None = None
    type: str


class MeasuredMemory(BaseModel):
    """What the run measured, and on what: on CUDA the allocator's peaks over the whole run,
    on the CPU the growth of the process's resident set (another quantity)."""

    device: str = Field(description="'cuda:<index>' or 'cpu'.")
    device_name: str
    device_total_gib: float
    measures: str | None = Field(description="What the numbers are; null until the run ends.")
    peak_allocated_gib: float | None = Field(description="torch.cuda.max_memory_allocated.")
    peak_reserved_gib: float | None = Field(description="torch.cuda.max_memory_reserved.")
    rss_growth_gib: float | None = Field(description="CPU runs: peak resident set growth.")
    libraries: dict[str, str]


class JobMemory(BaseModel):
    """The advisor's estimate, for a CUDA card, beside what the run measured where it ran."""

    estimated_for: str = Field(description="What the estimate models, and the class placed on.")
    estimated_peak_allocated_gib: float | None
    estimated_total_gib: float | None = Field(
        description="What the card must have free for the whole run (before the fit margin)."
    )
    measured: MeasuredMemory | None = Field(description="Null until the run starts.")
    comparable: bool = Field(
        description="True when the run was on a CUDA card, so that estimate and measurement "
        "are the same quantities."
    )
    note: str


class JobOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    model: str
    training_file: str
    validation_file: str | None
    variant: VariantName
    combine_with: list[str]
    requested_variant: str
    status: JobStatus
    created_at: int
    started_at: int | None
    finished_at: int | None
    step: int
    total_steps: int | None
    progress: float = Field(description="0-1.")
    eta_seconds: float | None
    loss: float | None
    tokens_per_second: float | None
    estimated_peak_gib: float | None = Field(
        description="The advisor's peak allocated on a CUDA card, GiB."
    )
    measured_peak_gib: float | None = Field(
        description="torch.cuda.max_memory_allocated over the run, GiB: the same quantity as "
        "estimated_peak_gib. Null on the CPU, where memory.measured.rss_growth_gib says what "
        "the process grew by instead."
    )
    measured_peak: dict[str, Any] | None = Field(
        description="The raw measurement record (bytes), with the device, the precision and "
        "the library versions."
    )
    device: str | None = Field(description="What the job ran on: 'cuda:<index>' or 'cpu'.")
    device_name: str | None = Field(description="The card's name, or the CPU's model.")
    precision: str | None = Field(description="The precision the run actually used.")
    memory: JobMemory
    hyperparameters: dict[str, Any]
    decision: dict[str, Any] | None = Field(
        description="The advisor's record when variant was 'auto'."
    )
    estimate: dict[str, Any] | None
    error: ErrorInfo | None
    attempts: int
    cancel_requested: bool
    cancel_outcome: str | None = Field(
        default=None, description="Set when a cancel won over a run that finished anyway."
    )
    resources: dict[str, Any] = Field(description="What the job asked for ({'gpus': N}).")
    placement: dict[str, Any] | None = Field(
        description="Where it was placed and why: card class, queue, the estimate for that "
        "card, the margin left, the reason; `waiting` while no registered card holds it. On "
        "several cards, `strategy`: ddp or fsdp, what the worker runs (docs/memory.md)."
    )
    worker: str | None = Field(
        default=None, description="host:pid of the process that ran (or runs) the job."
    )
    # OpenAI's FineTuningJob fields.
    fine_tuned_model: str | None = Field(
        description="'ft:<model>:<suffix or loracle>:<job id>' once it succeeded; the adapter "
        "is the job's artifact adapter_model.safetensors."
    )
    organization_id: str = "org-loracle"
    result_files: list[str] = Field(
        description="File ids of the job's results (its metrics.json), for GET "
        "/v1/files/{id}/content."
    )
    seed: int | None
    trained_tokens: int | None
    estimated_finish: int | None = Field(description="Unix time, while it runs.")
    integrations: list[Any] = Field(default_factory=list)
    metadata: dict[str, str]
    method: dict[str, Any]
    user_provided_suffix: str | None
    from_checkpoint: str | None = Field(description="The checkpoint the job started from.")
    allow_variant_change: bool = Field(
        default=False,
        description="As submitted: whether an out-of-memory retry may change the variant to "
        "QLoRA (always, for variant 'auto'). `variant`, `combine_with` and `hyperparameters` "
        "are what ran, after any retry's change (its `oom_retry` event says what changed).",
    )
    evaluation: dict[str, Any] | None = Field(
        default=None,
        description="On GET of one job (null in lists), once a succeeded run with a "
        "validation file ended: the base model (adapter disabled) against the adapter on the "
        "validation file, as metrics.json's `comparison`. `base` and `adapter` each hold "
        "`loss` (mean cross-entropy per trained token, nats), `perplexity` (exp of loss) and "
        "`exact_match` (prompt/completion files only, else null: `matched` of `rows` greedy "
        "completions equal to the reference, as token ids up to the first eos; the first 64 "
        "rows, at most 64 new tokens; `skipped` rows that did not fit; `rate`); `delta` is "
        'adapter minus base; `validation_rows`, `tokens`, `format`. Instead `{"skipped": '
        'why}` for a run over several ranks, or `{"error": what}` when the comparison '
        "failed (the job succeeded all the same).",
    )


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]
    has_more: bool


class EventOut(BaseModel):
    id: int
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    type: str
    message: str
    data: dict[str, Any]


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventOut]
    has_more: bool


class ArtifactOut(BaseModel):
    name: str
    bytes: int


class ArtifactList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ArtifactOut]


class CheckpointMetrics(BaseModel):
    step: int
    train_loss: float | None
    valid_loss: float | None = Field(
        description="The validation file's loss at this step (eval_steps), else null."
    )
    full_valid_loss: float | None = Field(
        description="The same: loracle evaluates on the whole validation file each time."
    )


class CheckpointOut(BaseModel):
    """OpenAI's fine-tuning checkpoint: a complete Trainer checkpoint of the job, on disk."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetrics
    download: str = Field(description="Where its files are, as a tar archive.")


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointOut]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class MergeCreate(BaseModel):
    """POST /v1/fine_tuning/jobs/{id}/merge: merge the job's adapter into its base."""

    model_config = STRICT

    into_model_root: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Also write the merged model to this folder of the first model root "
        "(LORACLE_MODEL_ROOTS), where a later job names it as its `model`. A folder already "
        "there is replaced only when it holds an earlier merge of this same job.",
    )
    dtype: Literal["bf16", "fp16", "fp32"] | None = Field(
        default=None,
        description="The merged weights' dtype; default: the precision the job trained in "
        "(bf16 or fp16 on a card, fp32 on a CPU). A QLoRA base is dequantized to it, never "
        "quantized again.",
    )


class MergeOut(BaseModel):
    """The job's newest merge: requested (`queued`), `running` on a worker, `succeeded`
    (download it from `download_url`) or `failed` (`error`)."""

    object: Literal["fine_tuning.job.merge"] = "fine_tuning.job.merge"
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    into_model_root: str | None = None
    dtype: str | None = None
    base_weights: str | None = Field(
        default=None,
        description="`original`, or `nf4-dequantized` for a QLoRA job: its NF4 base "
        "dequantized to `dtype`, the weights the adapter was trained on, then merged.",
    )
    bytes: int | None = None
    files: list[str] = Field(default_factory=list)
    model_root_path: str | None = None
    model: str | None = Field(
        default=None, description="What a later job names as its model (into_model_root)."
    )
    download_url: str | None = Field(
        default=None, description="The merged model as a tar archive (once succeeded)."
    )
    error: ErrorInfo | None = None
    requested_at: int
    finished_at: int | None = None
