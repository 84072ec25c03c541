"""/v1/jobs: submit, list, read, cancel; events and artifacts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy.orm import Session

from api import idempotency
from api.deps import DbDep, OwnerDep, QueueDep, SettingsDep
from api.errors import ApiError
from api.jobs import service
from api.jobs.schemas import ArtifactList, EventList, JobCreate, JobList, JobOut, JobStatus
from api.schemas import error_responses
from loracle.store import jobs as store
from loracle.store.models import JobRow

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _job(s: Session, job_id: str, owner: str | None) -> JobRow:
    row = store.get_job(s, job_id, owner)
    if row is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}; list yours with GET /v1/jobs")
    return row


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "Replay of an Idempotency-Key"},
        **error_responses(422),
    },
    summary="Submit a fine-tuning job",
)
def create_job(
    body: JobCreate,
    s: DbDep,
    settings: SettingsDep,
    owner: OwnerDep,
    queue: QueueDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=idempotency.HEADER,
            description="Retry-safe submission: the same key and body return the same job.",
        ),
    ] = None,
) -> Any:
    key = idempotency.validate(idempotency_key)
    digest = idempotency.body_hash(body.model_dump(mode="json")) if key else ""
    job_id = store.new_id("job")
    if key:
        existing = idempotency.replay_or_claim(s, owner, "jobs", key, digest, job_id)
        if existing is not None:
            return JSONResponse(service.job_out(_job(s, existing, owner)), status_code=200)
    row = service.create_job(s, settings, body, owner, job_id)
    # The job is committed before anything is enqueued: the store is the source of truth.
    s.commit()
    service.enqueue(settings, queue, row.id)
    s.refresh(row)
    return service.job_out(row)


@router.get("", response_model=JobList)
def list_jobs(
    s: DbDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        str | None, Query(max_length=64, description="Last job id of the previous page.")
    ] = None,
    status: JobStatus | None = None,
) -> Any:
    page = store.list_jobs(s, owner, limit, after, status)
    if page is None:
        raise ApiError(
            422, "invalid_request", f"after: no job {after!r}; pass an id from a previous page"
        )
    rows, more = page
    return {"object": "list", "data": [service.job_out(r) for r in rows], "has_more": more}


@router.get("/{job_id}", response_model=JobOut, responses=error_responses(404))
def get_job(job_id: str, s: DbDep, owner: OwnerDep) -> Any:
    return service.job_out(_job(s, job_id, owner))


@router.get("/{job_id}/events", response_model=EventList, responses=error_responses(404))
def list_events(
    job_id: str,
    s: DbDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int | None, Query(ge=0, description="Last event id already seen.")] = None,
) -> Any:
    _job(s, job_id, owner)
    rows, more = store.list_events(s, job_id, limit, after)
    return {
        "object": "list",
        "data": [
            {
                "id": e.pk,
                "object": "fine_tuning.job.event",
                "created_at": int(e.created_at.timestamp()),
                "level": e.level,
                "type": e.type,
                "message": e.message,
                "data": e.data or {},
            }
            for e in rows
        ],
        "has_more": more,
    }


@router.post("/{job_id}/cancel", response_model=JobOut, responses=error_responses(404, 409))
def cancel_job(job_id: str, s: DbDep, owner: OwnerDep) -> Any:
    row = _job(s, job_id, owner)
    if row.status in store.TERMINAL:
        raise ApiError(409, "conflict", f"job {job_id} already {row.status}; nothing to cancel")
    status = store.request_cancel(s, row)
    if status in store.TERMINAL and status != store.CANCELLED:
        raise ApiError(409, "conflict", f"job {job_id} already {status}; nothing to cancel")
    s.commit()
    s.refresh(row)
    return service.job_out(row)


@router.get("/{job_id}/artifacts", response_model=ArtifactList, responses=error_responses(404))
def list_artifacts(job_id: str, s: DbDep, owner: OwnerDep, settings: SettingsDep) -> Any:
    _job(s, job_id, owner)
    return {"object": "list", "data": service.list_artifacts(settings, job_id)}


@router.get(
    "/{job_id}/artifacts/{name:path}",
    response_class=FileResponse,
    responses=error_responses(404, 422),
)
def download_artifact(
    job_id: str, name: str, s: DbDep, owner: OwnerDep, settings: SettingsDep
) -> Any:
    _job(s, job_id, owner)
    return FileResponse(service.artifact_path(settings, job_id, name), filename=name)
