"""Request and response shapes of /v1/jobs (after OpenAI's fine-tuning API where it fits)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from advisor.profile import Goal, Hardware

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Hyperparameters(BaseModel):
    """Training knobs; each unset one takes the worker's documented default
    (worker/plan.py TrainingPlan)."""

    model_config = ConfigDict(extra="forbid")

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
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    precision: Literal["auto", "bf16", "fp16", "fp32"] | None = None
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd"] | None = None
    gradient_checkpointing: bool | None = None
    lr_scheduler: Literal["cosine", "linear", "constant"] | None = None
    warmup_ratio: float | None = Field(default=None, ge=0, lt=1)
    logging_steps: int | None = Field(default=None, ge=1)


class JobProfile(BaseModel):
    """What the advisor needs beyond the job for variant 'auto': the card and the goal."""

    model_config = ConfigDict(extra="forbid")

    hardware: Hardware | None = None
    goal: Goal = Field(default_factory=Goal)


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
    variant: Literal["lora", "qlora", "dora", "loraplus", "auto"] = Field(
        default="auto",
        description="'auto' lets the advisor choose from the profile (and stores its decision).",
    )
    combine_with: list[Literal["qlora", "dora", "loraplus"]] = Field(default_factory=list)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    profile: JobProfile | None = None

    @model_validator(mode="after")
    def _auto_alone(self) -> JobCreate:
        if self.variant == "auto" and self.combine_with:
            raise ValueError(
                "combine_with is chosen by the advisor when variant is 'auto'; remove it or "
                "name the variant"
            )
        return self


class ErrorInfo(BaseModel):
    type: str
    message: str


class JobOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    model: str
    training_file: str
    validation_file: str | None
    variant: Literal["lora", "qlora", "dora", "loraplus"]
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
    estimated_peak_gib: float | None = Field(description="The advisor's peak allocated, GiB.")
    measured_peak_gib: float | None = Field(
        description="Measured: torch.cuda.max_memory_allocated on CUDA, peak RSS growth on CPU."
    )
    measured_peak: dict[str, Any] | None
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
    worker: str | None = Field(
        default=None, description="host:pid of the process that ran (or runs) the job."
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
