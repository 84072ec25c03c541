"""GET /v1/workers: live workers, their cards, and what runs where."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import DbDep
from api.fleet.schemas import WorkerList
from loracle.store import jobs as store
from loracle.store import workers

router = APIRouter(prefix="/v1/workers", tags=["fleet"])


@router.get("", response_model=WorkerList, summary="Live workers and their cards")
def list_workers(s: DbDep) -> Any:
    """Workers whose heartbeat lease is alive (one that missed it drops out), oldest first.
    `running` lists the jobs running on each worker's host (a job records host:pid of the
    pool process that trains it)."""
    running: dict[str, list[str]] = {}
    for job_id, worker in store.running_jobs(s):
        running.setdefault((worker or "").rpartition(":")[0], []).append(job_id)
    return WorkerList.of(workers.live(s), running)
