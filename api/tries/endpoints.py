"""/v1/fine_tuning/jobs/{id}/try (and its alias under /v1/jobs): complete prompts with a
succeeded job's base model and with its adapter, side by side, on a worker."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api.deps import DbDep, OwnerDep, QueueDep, SettingsDep
from api.errors import ApiError
from api.jobs.endpoints import PREFIX
from api.schemas import ErrorOut, error_responses
from api.tries import service
from api.tries.schemas import TryCreate, TryOut
from loracle import placement
from loracle.queue import TRY_JOB

router = APIRouter(tags=["fine-tuning"])


@router.post(
    "/{job_id}/try",
    response_model=TryOut,
    responses={
        202: {"model": TryOut, "description": "Not done within LORACLE_TRY_WAIT_S: poll `url`"},
        **error_responses(404, 409, 422),
        429: {
            "model": ErrorOut,
            "description": "rate_limited: the key has LORACLE_TRY_MAX_IN_FLIGHT tries queued "
            "or running; retry after Retry-After seconds",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
        503: {
            "model": ErrorOut,
            "description": "broker_unavailable (the try could not be sent) or no_worker (no "
            "worker registered); ask again",
        },
    },
    summary="Try a succeeded job's adapter: its completions and the base's, side by side",
)
def try_job(
    job_id: str,
    body: TryCreate,
    s: DbDep,
    owner: OwnerDep,
    settings: SettingsDep,
    queue: QueueDep,
    response: Response,
) -> Any:
    """A worker's inference consumer loads the job's base (a QLoRA job's in 4-bit, as it
    trained), applies the adapter, and completes each prompt twice with the same seed and
    settings: the adapter disabled (`base`), then enabled (`adapter`). It runs on a queue of
    its own, never behind a training job, and never in this process. Answered 200 with the
    completions when they come within LORACLE_TRY_WAIT_S, else 202: follow `url`."""
    row = service.job(s, job_id, owner)
    service.check_job(row)
    service.check_length(settings, row, body)
    klass = service.card_class(s, row)
    service.check_limit(s, settings, owner)
    tried = service.add(s, row, owner, body)
    s.commit()
    try:
        queue.send_task(TRY_JOB, args=[tried.id], queue=placement.inference_queue(klass))
    except Exception as exc:  # any broker failure: say so now rather than leave it queued
        service.failed_to_send(s, tried.id, exc)
        s.commit()
        raise ApiError(
            503, "broker_unavailable", f"the try of {job_id} could not be sent; ask again"
        ) from exc
    tried = service.wait(s, tried, settings.try_wait_s)
    if tried.status not in ("succeeded", "failed"):
        response.status_code = 202
    return service.out(tried, PREFIX)


@router.get(
    "/{job_id}/tries/{try_id}",
    response_model=TryOut,
    responses=error_responses(404),
    summary="A try: queued, running, succeeded with its completions, or failed",
)
def get_try(job_id: str, try_id: str, s: DbDep, owner: OwnerDep, settings: SettingsDep) -> Any:
    """A try of one of this key's jobs; one unfinished LORACLE_TRY_TIMEOUT_S after it was
    asked is answered as failed (`try_timeout`)."""
    service.job(s, job_id, owner)
    return service.out(service.get(s, settings, job_id, try_id, owner), PREFIX)
