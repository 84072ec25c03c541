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
        "$LORACLE_DATA_DIR/models.",
    )
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    worker_gpu: str | None = Field(
        default=None,
        description="GPU catalog id of the workers' card: the hardware variant 'auto' plans "
        "for when a job's profile names none.",
    )
    worker_gpu_memory_gib: float | None = Field(default=None, gt=0)
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
    lost_message_after_s: float = Field(
        default=60.0,
        gt=0,
        description="A queued job sent to the broker longer ago than this, whose message is "
        "neither waiting in the broker's queue nor being run (a worker took it and died "
        "before starting the job), is sent again.",
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

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'loracle.db'}"

    @property
    def allowed_model_roots(self) -> list[Path]:
        if self.model_roots:
            return [Path(p).expanduser().resolve() for p in self.model_roots.split(":") if p]
        return [self.data_dir / "models"]


@lru_cache
def get_settings() -> Settings:
    return Settings()
