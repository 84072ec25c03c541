"""The bodies of POST /v1/fine_tuning/jobs/{id}/try and of the try it answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.jobs.schemas import STRICT

MAX_PROMPTS = 8
MAX_NEW_TOKENS = 512


class TryCreate(BaseModel):
    """Prompts to complete with the job's base model and with its adapter, side by side."""

    model_config = STRICT

    prompts: list[str] = Field(
        min_length=1,
        max_length=MAX_PROMPTS,
        description=f"1 to {MAX_PROMPTS} prompts, each completed by the base and by the "
        "adapter. Each must leave room for `max_new_tokens` in the model's context "
        "(`max_position_embeddings` of its config.json): a longer one is refused with a 422 "
        "that names the limit in tokens.",
    )
    max_new_tokens: int = Field(
        default=64,
        ge=1,
        le=MAX_NEW_TOKENS,
        description="The most tokens generated for each prompt on each side; generation "
        "ends sooner at the end-of-sequence token. Time grows with it (one forward pass a "
        "token).",
    )
    temperature: float = Field(
        default=0.0,
        ge=0,
        le=2,
        description="0: greedy, the most likely token each time (deterministic). Above 0: "
        "sampling from the whole distribution at this temperature (no top-k or top-p cut), "
        "drawn with `seed`.",
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**32 - 1,
        description="Seeds every generation: the base and the adapter draw from the same "
        "seed, and the same seed and settings give the same completions on the same worker.",
    )


class TryCompletion(BaseModel):
    prompt: str
    base: str = Field(description="The base model's completion (the adapter disabled).")
    adapter: str = Field(description="The completion with the job's adapter.")
    prompt_tokens: int
    base_tokens: int = Field(description="Tokens the base generated.")
    adapter_tokens: int = Field(description="Tokens the adapter generated.")


class TryError(BaseModel):
    code: str = Field(
        description="Why the try failed: `try_timeout` (no completions within "
        "LORACLE_TRY_TIMEOUT_S: no worker of the job's card class took it, or it ran past "
        "the limit), `prompt_too_long` (a prompt and max_new_tokens exceed the model's "
        "context, by the worker's tokenizer), `remote_worker_unsupported` (the worker shares "
        "no disk with the API), `adapter_missing`, `job_not_succeeded`, `model_source`, "
        "`out_of_memory`, `worker_shutdown` (the worker stopped mid-try), "
        "`broker_unavailable` (never sent), or `try_failed` (another error; the worker's log "
        "has it)."
    )
    message: str


class TryOut(BaseModel):
    """A try: `queued` until a worker's inference consumer takes it, `running`, then
    `succeeded` with the completions side by side, or `failed` with an error code."""

    object: Literal["fine_tuning.job.try"] = "fine_tuning.job.try"
    id: str
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    prompts: list[str]
    max_new_tokens: int
    temperature: float
    seed: int
    completions: list[TryCompletion] = Field(
        default_factory=list, description="One per prompt, in order, once succeeded."
    )
    device: str | None = Field(
        default=None, description="Where it ran: `cpu`, or `cuda:N` of the worker's cards."
    )
    base_weights: str | None = Field(
        default=None,
        description="`original`, or `nf4` for a QLoRA job: its base in 4-bit NF4 as trained.",
    )
    load_seconds: float | None = Field(
        default=None, description="Loading the base, its adapter and the tokenizer."
    )
    generate_seconds: float | None = Field(
        default=None, description="Generating every completion, both sides."
    )
    error: TryError | None = None
    created_at: int
    finished_at: int | None = None
    url: str = Field(description="Where to follow it (GET).")
