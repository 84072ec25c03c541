"""Tables of the job store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Integer primary keys autoincrement on SQLite only as INTEGER; BigInteger elsewhere.
PK = BigInteger().with_variant(Integer(), "sqlite")


def now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way out, whatever the backend stores: SQLite keeps
    no offset and would hand back naive datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class FileRow(Base):
    __tablename__ = "files"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    token_stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    # Deleted through the API: the bytes are gone, the row stays for the jobs that name it.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class JobRow(Base):
    __tablename__ = "jobs"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    model: Mapped[str] = mapped_column(Text)
    training_file: Mapped[str] = mapped_column(String(40), ForeignKey("files.id"))
    validation_file: Mapped[str | None] = mapped_column(String(40), ForeignKey("files.id"))
    variant: Mapped[str] = mapped_column(String(16))
    combine_with: Mapped[list[Any]] = mapped_column(JSON, default=list)
    requested_variant: Mapped[str] = mapped_column(String(16))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    tokens_per_second: Mapped[float | None] = mapped_column(Float)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    measured_peak: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error_type: Mapped[str | None] = mapped_column(String(128))
    error_message: Mapped[str | None] = mapped_column(Text)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    pause_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The lease: at most one process trains a job. A worker holds it while its
    # heartbeat renews lease_expires_at; fencing_token grows by one at every
    # acquisition, and every write of a worker is conditioned on its token, so a
    # process that lost its lease (paused, partitioned) cannot overwrite its successor.
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    fencing_token: Mapped[int] = mapped_column(Integer, default=0)
    cancel_outcome: Mapped[str | None] = mapped_column(Text)
    # Fleet placement (loracle.placement): the cards the job asked for, where it was placed
    # (card class, estimate, margin, why) and the broker queue that carries it; no queue yet
    # while it waits for a fitting worker to register.
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    placement: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    queue: Mapped[str | None] = mapped_column(String(128))
    # OpenAI's fine-tuning fields (migration 0003): the suffix, metadata and method as
    # submitted, the tokens trained on, and the result files (the metrics file's file id).
    suffix: Mapped[str | None] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    method: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    result_files: Mapped[list[Any]] = mapped_column(JSON, default=list)

    __table_args__ = (Index("ix_jobs_owner_pk", "owner", "pk"),)


class EventRow(Base):
    __tablename__ = "events"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    level: Mapped[str] = mapped_column(String(16), default="info")


class IdempotencyRow(Base):
    """An Idempotency-Key seen on a POST: the same key and body answer the same object."""

    __tablename__ = "idempotency_keys"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    scope: Mapped[str] = mapped_column(String(16))
    request_hash: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)

    __table_args__ = (UniqueConstraint("owner", "scope", "key", name="uq_idempotency"),)


class WorkerRow(Base):
    """A running worker and its cards, kept alive by its heartbeat (loracle.store.workers)."""

    __tablename__ = "workers"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(255), unique=True, index=True)
    host: Mapped[str] = mapped_column(String(255))
    card_class: Mapped[str] = mapped_column(String(128), index=True)
    cards: Mapped[list[Any]] = mapped_column(JSON, default=list)
    device: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(64))
    concurrency: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[Any]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class WebhookEndpointRow(Base):
    """Where a key wants its jobs' outcomes sent (loracle.webhooks), with the secret that
    signs each delivery."""

    __tablename__ = "webhook_endpoints"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(128))
    events: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)


class WebhookDeliveryRow(Base):
    """The outbox: one event for one endpoint, written in the transaction that changed the
    job's status, sent until the endpoint takes it (at least once, same id every try)."""

    __tablename__ = "webhook_deliveries"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    endpoint_id: Mapped[str] = mapped_column(String(40), index=True)
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    gave_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)


class TryRow(Base):
    """A try of a succeeded job's adapter (POST /v1/fine_tuning/jobs/{id}/try): the prompts
    and settings asked, and the completions of the base and of the adapter once a worker's
    inference consumer generated them (loracle.store.tries)."""

    __tablename__ = "tries"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id"), index=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    # queued -> running -> succeeded | failed
    status: Mapped[str] = mapped_column(String(16))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # The per-key limit counts a key's unfinished tries (loracle.store.tries.in_flight).
    __table_args__ = (Index("ix_tries_owner_status", "owner", "status"),)
