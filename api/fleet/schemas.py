"""Response shapes of /v1/workers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class CardOut(BaseModel):
    index: str
    name: str
    total_gib: float
    free_gib: float
    compute_capability: str | None
    bf16: bool


class WorkerOut(BaseModel):
    id: str = Field(description="host:pid of the worker's main process.")
    object: Literal["worker"] = "worker"
    host: str
    card_class: str = Field(description="What placement routes by (loracle.placement).")
    device: Literal["cuda", "cpu"]
    cards: list[CardOut] = Field(
        description="Its cards; a CPU worker's one card is its memory budget "
        "(LORACLE_WORKER_MEMORY_GIB), for CPU workers and tests."
    )
    version: str
    concurrency: int
    queues: list[str]
    started_at: int
    heartbeat_at: int
    running: list[str] = Field(description="Jobs running on this worker's host now.")


class WorkerList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WorkerOut]

    @staticmethod
    def of(rows: list[Any], running: dict[str, list[str]]) -> WorkerList:
        return WorkerList(
            data=[
                WorkerOut(
                    id=w.id,
                    host=w.host,
                    card_class=w.card_class,
                    device=w.device,
                    cards=w.cards,
                    version=w.version,
                    concurrency=w.concurrency,
                    queues=w.queues,
                    started_at=int(w.started_at.timestamp()),
                    heartbeat_at=int(w.heartbeat_at.timestamp()),
                    running=running.get(w.host, []),
                )
                for w in rows
            ]
        )
