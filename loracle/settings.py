"""One settings object per process, read from ``LORACLE_*`` environment variables.

The API and the worker read the same variables, so ``loracle serve`` and
``loracle worker`` started with one environment agree on the data directory,
job store and broker. Tests override ``get_settings`` (FastAPI dependency
overrides) rather than patching the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORACLE_", extra="ignore")

    data_dir: Path = Field(
        default=Path("./data"),
        description="Uploaded files, checkpoints, adapters and the embedded job store live here.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the job store; default: SQLite at "
        "$LORACLE_DATA_DIR/loracle.db. PostgreSQL: postgresql+psycopg://user@host/db.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker, e.g. redis://127.0.0.1:6379/0. Unset: the embedded "
        "broker that needs no server (see loracle/queue.py).",
    )
    model_roots: str | None = Field(
        default=None,
        description="Colon-separated directories that local model paths must lie in; default "
        "$LORACLE_DATA_DIR/models. A relative model path is relative to the first "
        "(loracle/model_source.py). Created at start.",
    )
    hub_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="How long a job submission waits for the Hugging Face hub to confirm a hub "
        "id (connect, then each read; loracle/hub.py). Past it the answer is 503 "
        "hub_unreachable; offline (HF_HUB_OFFLINE=1) the hub is not asked. A worker asks the "
        "same, as long at most, before it loads a hub model that is not in its cache.",
    )
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    worker_gpu: str | None = Field(
        default=None,
        description="GPU catalog id of the workers' card: the hardware variant 'auto' plans "
        "for when a job's profile names none.",
    )
    worker_gpu_memory_gib: float | None = Field(default=None, gt=0)
    worker_memory_gib: float | None = Field(
        default=None,
        gt=0,
        le=65536,
        description="A CPU worker's memory budget in GiB, registered as its card's memory so "
        "that placement treats it like a card (`loracle worker --memory-gib`). For CPU "
        "workers and tests; a GPU worker registers its cards' measured memory instead. "
        "Unset: the machine's memory.",
    )
    worker_cpu_cards: int = Field(
        default=1,
        ge=1,
        le=64,
        description='How many "cards" a CPU worker registers, each with the memory budget '
        "(`loracle worker --cards`): with 2 and concurrency 1 it consumes its class's `.x2` "
        "queue too and runs a `resources.gpus: 2` job as 2 processes on the CPU (gloo). For "
        "CPU workers and tests; a GPU worker registers the cards it sees.",
    )
    collective_timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="A job on several cards: how long a collective (gradient all-reduce, the "
        "step-end stop flag) waits for a rank before the run fails, so that a rank that died "
        "or hangs ends the job instead of blocking the others for ever (torchrun also stops "
        "the other ranks as soon as one exits with an error).",
    )
    lease_ttl_s: float = Field(
        default=60.0,
        gt=0,
        description="A running job whose worker has not renewed its lease for this long is "
        "requeued (or failed, after max_attempts). See docs/operations.md.",
    )
    heartbeat_s: float = Field(
        default=10.0,
        gt=0,
        description="How often a worker renews its lease; must be shorter than lease_ttl_s.",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Starts a job may have before it ends failed."
    )
    oom_retries: int = Field(
        default=2,
        ge=0,
        le=16,
        description="Tries more a one-card run gets, within one start, after CUDA runs out of "
        "memory: each applies the advisor's next change that keeps the effective batch "
        "(advisor/oom.py) and resumes from the newest checkpoint; then the job fails with "
        "out_of_memory. 0: the first out-of-memory error fails the job.",
    )
    broker_visibility_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="Redis redelivers an unacknowledged message after this long; the lease "
        "makes such a second delivery harmless.",
    )
    api_key_hashes: str | None = Field(
        default=None,
        description="Comma-separated SHA-256 hex digests of the accepted API keys, each "
        "optionally as <owner>:<digest>; keys with one owner share its files and jobs.",
    )
    auth_disabled: bool = Field(
        default=False, description="LORACLE_AUTH_DISABLED=1 turns authentication off."
    )
    trace_timeout_s: float = Field(
        default=180.0,
        gt=0,
        description="A memory trace (POST /v1/estimates method 'trace') that takes longer is "
        "stopped and answered with a 422; a 70B trace takes under a minute on 2 cores.",
    )
    trace_concurrency: int = Field(
        default=1, ge=1, description="Traces run at once in the API process (each takes a core)."
    )
    dispatch_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the API re-sends queued jobs the broker never received.",
    )
    webhook_retry_base_s: float = Field(
        default=5.0,
        gt=0,
        description="A failed webhook delivery is tried again after this, doubled at each "
        "try (at most an hour apart), for 24 hours.",
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="How long a webhook endpoint has to answer."
    )
    webhook_give_up_after_s: float = Field(
        default=86_400.0, gt=0, description="How long a delivery is retried (24 hours)."
    )
    stream_poll_s: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="How often an open event stream (GET /v1/jobs/{id}/events/stream) reads "
        "the store for new events: the most a client waits behind the worker's own writes, "
        "which land every 0.5 s. Each read is one short query on a pooled connection.",
    )
    lost_message_after_s: float = Field(
        default=60.0,
        gt=0,
        description="A queued job sent to the broker longer ago than this, whose message is "
        "neither waiting in the broker's queue nor being run (a worker took it and died "
        "before starting the job), is sent again.",
    )

    # -- trying an adapter (POST /v1/fine_tuning/jobs/{id}/try) ----------------------------
    try_max_in_flight: int = Field(
        default=2,
        ge=1,
        description="Tries of one key queued or running at once; one more is answered 429 "
        "with Retry-After. Each try loads the base and the adapter on a worker's inference "
        "consumer, one try at a time per worker.",
    )
    try_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="A try still queued or running this long after it was asked is answered "
        "as failed (`try_timeout`), and no longer counts against its key's limit; a worker "
        "that takes it later skips it, and one generating stops at its next token.",
    )
    try_wait_s: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="How long POST .../try waits for the completions before it answers 202 "
        "with the try to poll (GET .../tries/{try_id}); 0 answers 202 at once. The wait holds "
        "one of the API's worker threads.",
    )

    # -- workers on other hosts (docs/operations.md, "Two hosts") -------------------------
    api_url: str | None = Field(
        default=None,
        description="A worker's way to the API's file store, e.g. http://api-host:8000. Set: "
        "remote mode, the worker shares no disk with the API: it downloads a job's training "
        "and validation files into $LORACLE_DATA_DIR/cache (sha256 checked), uploads each "
        "sealed checkpoint and the finished adapter, and resumes from the last checkpoint the "
        "API published. Unset: the worker reads and writes the API's LORACLE_DATA_DIR itself "
        "(one machine, or a shared volume). Needs LORACLE_WORKER_TOKEN.",
    )
    worker_token: str | None = Field(
        default=None,
        description="A worker's credential in remote mode (LORACLE_API_URL): sent as "
        "`Authorization: Bearer <token>` to the /v1/worker/ endpoints. It is not an API key: "
        "it reads only the files of a job its worker holds the lease of and writes only that "
        "job's checkpoints and adapter. `loracle keys worker` makes one.",
    )
    worker_token_hashes: str | None = Field(
        default=None,
        description="On the API: comma-separated SHA-256 hex digests of the accepted worker "
        "tokens. Unset: the /v1/worker/ endpoints refuse every request (401) unless "
        "LORACLE_AUTH_DISABLED=1; shared-disk workers need none.",
    )
    file_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="A remote worker's connect and per-read timeout on the file endpoints. "
        "A transfer that fails (no connection, a 5xx, a timeout) is tried 3 times, 1 s and 3 s "
        "apart; then the attempt ends with FileStoreUnreachable and the job is requeued.",
    )
    max_artifact_bytes: int = Field(
        default=16 * 1024**3,
        ge=1,
        description="The largest checkpoint or adapter upload (a tar) the API accepts from a "
        "worker, in bytes; default 16 GiB (a LoRA checkpoint of a 70B model with its "
        "optimizer state is a few GiB).",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self) -> Settings:
        # A lease renewed less often than it lasts expires between two heartbeats: the
        # reaper would requeue every running job while its worker is alive and training.
        if self.heartbeat_s >= self.lease_ttl_s:
            raise ValueError(
                f"LORACLE_HEARTBEAT_S={self.heartbeat_s:g} must be shorter than "
                f"LORACLE_LEASE_TTL_S={self.lease_ttl_s:g}: a lease renewed less often than "
                "it lasts expires while its worker is still training, and the job is requeued "
                "and run again. Keep several heartbeats per lease (the defaults are 10 s and "
                "60 s)"
            )
        return self

    @model_validator(mode="after")
    def _remote_needs_token(self) -> Settings:
        if self.api_url and not (self.worker_token and self.worker_token.strip()):
            raise ValueError(
                f"LORACLE_API_URL={self.api_url} puts this worker in remote-file mode, which "
                "needs LORACLE_WORKER_TOKEN (a worker token whose digest the API lists in "
                "LORACLE_WORKER_TOKEN_HASHES; `loracle keys worker` makes one). Set it, or "
                "unset LORACLE_API_URL to use the shared data directory"
            )
        if self.api_url and not (self.database_url and self.broker_url):
            # Unset, both default to files under this worker's own LORACLE_DATA_DIR: a store
            # and a broker no API sees, so the worker would wait for jobs forever.
            missing = [
                name
                for name, value in (
                    ("LORACLE_DATABASE_URL", self.database_url),
                    ("LORACLE_BROKER_URL", self.broker_url),
                )
                if not value
            ]
            raise ValueError(
                f"LORACLE_API_URL is set (a worker on another host) but {' and '.join(missing)} "
                "is not: their defaults live in this host's own data directory, where no API "
                "sees them. Point them at the API host's store and broker, e.g. "
                "postgresql+psycopg://loracle:...@api-host/loracle and redis://:...@api-host:6379/0"
            )
        if self.api_url and not self.api_url.startswith(("http://", "https://")):
            raise ValueError(
                f"LORACLE_API_URL={self.api_url!r} must start with http:// or https://, e.g. "
                "http://api-host:8000"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'loracle.db'}"

    @property
    def allowed_model_roots(self) -> list[Path]:
        if self.model_roots:
            return [Path(p).expanduser().resolve() for p in self.model_roots.split(":") if p]
        return [self.data_dir / "models"]

    def create_model_roots(self) -> None:
        """Create the model roots that do not exist yet, so that the first model a user copies
        in has its place, as the README says. Raises `RuntimeError` naming the root and the
        setting when one cannot be created: better at start than at the first job."""
        for root in self.allowed_model_roots:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RuntimeError(
                    f"cannot create the model root {root} ({exc.strerror}); fix "
                    "LORACLE_MODEL_ROOTS (colon-separated directories) or its permissions"
                ) from None


@lru_cache
def get_settings() -> Settings:
    return Settings()
