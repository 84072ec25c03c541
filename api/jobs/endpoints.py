"""/v1/fine_tuning/jobs (and its alias /v1/jobs): submit, list, read, cancel; events and
artifacts; merge a succeeded job's adapter into its base and download the result."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from sqlalchemy.orm import Session

from api import idempotency
from api.deps import DbDep, OwnerDep, QueueDep, SettingsDep
from api.errors import ApiError
from api.jobs import service, stream
from api.jobs.schemas import (
    ArtifactList,
    CheckpointList,
    EventList,
    JobCreate,
    JobList,
    JobOut,
    JobStatus,
    MergeCreate,
    MergeOut,
)
from api.jobs.tarstream import tar_stream
from api.schemas import ErrorOut, error_responses
from loracle import dispatch
from loracle.errors import Problem
from loracle.queue import MERGE_JOB, QUEUE
from loracle.store import jobs as store
from loracle.store.models import JobRow

# Served at OpenAI's path, /v1/fine_tuning/jobs, and at /v1/jobs as an alias of the same
# handlers, left out of the documentation (api/main.py): one API, two addresses.
router = APIRouter(tags=["fine-tuning"])
PREFIX, ALIAS = "/v1/fine_tuning/jobs", "/v1/jobs"


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
        503: {
            "model": ErrorOut,
            "description": "hub_unreachable: the Hugging Face hub could not be asked about a "
            "hub id in time; retry after Retry-After seconds, or work offline (the message "
            "says how)",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
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
            return JSONResponse(
                service.job_out(_job(s, existing, owner)).model_dump(mode="json"),
                status_code=200,
            )
    row = service.create_job(s, settings, body, owner, job_id)
    # The job is committed before anything is enqueued: the store is the source of truth.
    s.commit()
    dispatch.enqueue(settings, queue, row.id)
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
    row = _job(s, job_id, owner)
    return service.job_out(row, evaluation=service.job_evaluation(s, row.id))


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
    return {"object": "list", "data": [stream.event_out(e) for e in rows], "has_more": more}


@router.get(
    "/{job_id}/events/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "Server-sent events: one per job event (`id:` and `data:`, the "
            "object GET /v1/jobs/{id}/events lists), then `event: end` with the job's final "
            "status once it has reached one.",
        },
        **error_responses(404, 422),
    },
    summary="Follow a job's events live (server-sent events); ends when the job does",
)
async def stream_events(
    job_id: str,
    owner: OwnerDep,
    settings: SettingsDep,
    after: Annotated[int | None, Query(ge=0, description="Last event id already seen.")] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias=stream.LAST_EVENT_ID,
            description="The last event id received; wins over `after` (EventSource sends it "
            "when it reconnects).",
        ),
    ] = None,
) -> StreamingResponse:
    # No DbDep: a session held for the life of a stream would pin a connection for hours.
    start = stream.resume_after(after, last_event_id)
    await stream.check_visible(settings, job_id, owner)
    return StreamingResponse(
        stream.event_stream(settings, job_id, start),
        media_type="text/event-stream",
        # no-cache: a proxy must not answer a later stream from this one; X-Accel-Buffering:
        # nginx would otherwise hold events back until its buffer fills.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


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


@router.post("/{job_id}/pause", response_model=JobOut, responses=error_responses(404, 409))
def pause_job(job_id: str, s: DbDep, owner: OwnerDep) -> Any:
    """A queued job is paused at once; a running one checkpoints at the end of its current
    optimizer step, leaves its card and is `paused` (the answer still says `running` until
    then). Resume continues from that checkpoint."""
    row = _job(s, job_id, owner)
    if row.status not in (store.QUEUED, store.RUNNING):
        raise ApiError(
            409, "conflict", f"job {job_id} is {row.status}: only a queued or running job pauses"
        )
    if row.pause_requested_at is not None or row.cancel_requested_at is not None:
        asked = "pause" if row.pause_requested_at is not None else "cancel"
        raise ApiError(409, "conflict", f"job {job_id} already has a {asked} under way")
    store.request_pause(s, row)
    s.commit()
    s.refresh(row)
    return service.job_out(row)


@router.post("/{job_id}/resume", response_model=JobOut, responses=error_responses(404, 409))
def resume_job(
    job_id: str, s: DbDep, owner: OwnerDep, settings: SettingsDep, queue: QueueDep
) -> Any:
    """A paused job goes back in the queue and continues from the checkpoint its pause
    wrote."""
    row = _job(s, job_id, owner)
    if not store.resume(s, row):
        raise ApiError(409, "conflict", f"job {job_id} is {row.status}: only a paused job resumes")
    s.commit()
    dispatch.enqueue(settings, queue, job_id)
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


@router.get(
    "/{job_id}/checkpoints", response_model=CheckpointList, responses=error_responses(404, 422)
)
def list_checkpoints(
    job_id: str,
    s: DbDep,
    owner: OwnerDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    after: Annotated[
        str | None, Query(max_length=128, description="Last checkpoint id of the previous page.")
    ] = None,
) -> Any:
    """The job's complete checkpoints on disk, newest first: step, training loss, and where
    to download each."""
    found = service.list_checkpoints(s, settings, _job(s, job_id, owner))
    start = 0
    if after is not None:
        ids = [c.id for c in found]
        if after not in ids:
            raise ApiError(
                422,
                "invalid_request",
                f"after: job {job_id} has no checkpoint {after!r}; pass an id from a previous page",
                [Problem("after", "is not one of the job's checkpoints", after)],
            )
        start = ids.index(after) + 1
    page = found[start : start + limit]
    return {
        "object": "list",
        "data": page,
        "has_more": start + limit < len(found),
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
    }


@router.get(
    "/{job_id}/checkpoints/{checkpoint_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-tar": {"schema": {"type": "string"}}}},
        **error_responses(404),
    },
    summary="A checkpoint's files, as a tar archive",
)
def download_checkpoint(
    job_id: str, checkpoint_id: str, s: DbDep, owner: OwnerDep, settings: SettingsDep
) -> Any:
    folder = service.checkpoint_path(s, settings, _job(s, job_id, owner), checkpoint_id)
    return StreamingResponse(
        tar_stream(folder, checkpoint_id),
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{checkpoint_id}.tar"'},
    )


@router.post(
    "/{job_id}/merge",
    status_code=202,
    response_model=MergeOut,
    responses=error_responses(404, 409, 422, 503),
    summary="Merge a succeeded job's adapter into its base model",
)
def merge_job(
    job_id: str,
    s: DbDep,
    owner: OwnerDep,
    queue: QueueDep,
    body: MergeCreate | None = None,
) -> Any:
    """A worker merges the adapter into the base (never this process: a merge holds the
    whole model in memory) and writes safetensors, config.json and the tokenizer, ready for
    `from_pretrained` and vLLM. A QLoRA job's base is its NF4 base dequantized to 16 bits,
    not quantized again. Follow it with GET .../merge or the job's events (`merge_started`,
    `merged`, `merge_failed`); download it from `download_url`."""
    row = _job(s, job_id, owner)
    service.request_merge(s, row, body or MergeCreate())
    s.commit()
    try:
        # The job's own queue: a worker of the class that trained it has its base and files.
        queue.send_task(MERGE_JOB, args=[job_id], queue=row.queue or QUEUE)
    except Exception as exc:  # any broker failure: say so now rather than leave it queued
        service.merge_failed_to_send(s, job_id, exc)
        s.commit()
        raise ApiError(
            503, "broker_unavailable", f"the merge of {job_id} could not be sent; ask again"
        ) from exc
    return service.merge_out(s, row, PREFIX)


@router.get("/{job_id}/merge", response_model=MergeOut, responses=error_responses(404))
def get_merge(job_id: str, s: DbDep, owner: OwnerDep) -> Any:
    """The job's newest merge: queued, running, succeeded (with its files and size) or
    failed (with an error code)."""
    merge = service.merge_out(s, _job(s, job_id, owner), PREFIX)
    if merge is None:
        raise ApiError(
            404, "not_found", f"job {job_id} was never merged; POST /v1/jobs/{job_id}/merge"
        )
    return merge


@router.get(
    "/{job_id}/merge/content",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-tar": {"schema": {"type": "string"}}}},
        **error_responses(404),
    },
    summary="The merged model's files, as a tar archive",
)
def download_merged(job_id: str, s: DbDep, owner: OwnerDep, settings: SettingsDep) -> Any:
    folder = service.merged_path(s, settings, _job(s, job_id, owner))
    name = f"{job_id}-merged"
    return StreamingResponse(
        tar_stream(folder, name),
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{name}.tar"'},
    )
