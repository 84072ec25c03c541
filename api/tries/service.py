"""What POST .../try checks before a try is stored, the per-key limit, and a try as the API
shows it. The generation itself runs on a worker (worker/tryout.py), never here."""

from __future__ import annotations

import math
import time

from sqlalchemy.orm import Session

from advisor.errors import Problem
from api.errors import ApiError
from api.tries.schemas import TryCompletion, TryCreate, TryError, TryOut
from loracle import context, placement
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store import tries, workers
from loracle.store.models import JobRow, TryRow

# A key at its limit is told to come back after this long at most (sooner when its oldest
# try times out sooner): a try on a small model takes seconds.
RETRY_AFTER_S = 5


def job(s: Session, job_id: str, owner: str | None) -> JobRow:
    """The caller's job; another key's is not found, as if it did not exist."""
    row = store.get_job(s, job_id, owner)
    if row is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}; list yours with GET /v1/jobs")
    return row


def check_job(row: JobRow) -> None:
    if row.status != store.SUCCEEDED:
        raise ApiError(
            409,
            "conflict",
            f"job {row.id} is {row.status}: only a succeeded job has an adapter to try; "
            f"follow it with GET /v1/fine_tuning/jobs/{row.id}",
        )


def check_length(settings: Settings, row: JobRow, body: TryCreate) -> None:
    """422 when a prompt and `max_new_tokens` exceed the model's context, naming the limit.
    Checked here when the model's config.json and tokenizer.json are on this host (see
    loracle/context.py); the worker checks again in any case."""
    roots = settings.allowed_model_roots
    window = context.window_of(row.model, roots)
    if window is None:
        return
    limit = window - body.max_new_tokens
    if limit < 1:
        raise ApiError(
            422,
            "prompt_too_long",
            f"max_new_tokens {body.max_new_tokens} leaves no room for a prompt in the "
            f"model's context of {window} tokens; use at most {window - 1}",
            [Problem("max_new_tokens", f"at most {window - 1} here", body.max_new_tokens)],
        )
    counts = context.token_counts(row.model, roots, body.prompts)
    if counts is None:
        return
    bad = context.too_long(counts, window, body.max_new_tokens)
    if bad:
        raise ApiError(
            422,
            "prompt_too_long",
            f"a prompt may have at most {limit} tokens: the model's context is {window} "
            f"tokens and max_new_tokens is {body.max_new_tokens}; shorten "
            + ", ".join(f"prompts.{i} ({counts[i]} tokens)" for i in bad)
            + " or lower max_new_tokens",
            [
                Problem(
                    f"prompts.{i}",
                    f"{counts[i]} tokens, more than the {limit} this model's context of "
                    f"{window} leaves beside max_new_tokens {body.max_new_tokens}",
                    None,
                )
                for i in bad
            ],
        )


def check_limit(s: Session, settings: Settings, owner: str | None) -> None:
    """429 when the key already has LORACLE_TRY_MAX_IN_FLIGHT tries unfinished. Counted, then
    stored: two tries asked in the same instant may both pass, one over the limit."""
    tries.expire(s, settings.try_timeout_s, owner)
    asked = tries.in_flight(s, owner)
    limit = settings.try_max_in_flight
    if len(asked) < limit:
        return
    oldest_left = settings.try_timeout_s - (store.store_now(s) - asked[0]).total_seconds()
    retry = max(1, min(RETRY_AFTER_S, math.ceil(oldest_left)))
    raise ApiError(
        429,
        "rate_limited",
        f"this key has {len(asked)} tries queued or running, and its limit is {limit} "
        f"(LORACLE_TRY_MAX_IN_FLIGHT); wait for one to finish (GET its url) and retry after "
        f"{retry} s",
        headers={"Retry-After": str(retry)},
    )


def card_class(s: Session, row: JobRow) -> str:
    """The card class whose inference consumers take the job's tries: the class it trained
    on, else (a job stored before placement existed) the oldest live worker's."""
    klass = (row.placement or {}).get("card_class") or placement.class_of_queue(row.queue)
    if klass:
        return str(klass)
    live = workers.live(s)
    if not live:
        raise ApiError(
            503,
            "no_worker",
            "no worker is registered to run the try; start one (loracle worker) and ask again",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return live[0].card_class


def add(s: Session, row: JobRow, owner: str | None, body: TryCreate) -> TryRow:
    return tries.add_try(s, row.id, owner, body.model_dump(mode="json"))


def failed_to_send(s: Session, try_id: str, error: Exception) -> None:
    tries.fail(s, try_id, "broker_unavailable", f"the try could not be sent: {error}; ask again")


def wait(s: Session, row: TryRow, seconds: float) -> TryRow:
    """Re-read the try until it is finished or `seconds` have passed. Each look is one short
    query; the session's transaction is ended before each so the worker's writes are seen."""
    deadline = time.monotonic() + seconds
    pause = 0.05
    while row.status in tries.UNFINISHED and time.monotonic() < deadline:
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.5)
        s.commit()
        s.refresh(row)
    return row


def get(s: Session, settings: Settings, job_id: str, try_id: str, owner: str | None) -> TryRow:
    tries.expire(s, settings.try_timeout_s, owner)
    row = tries.get_try(s, try_id, job_id, owner)
    if row is None:
        raise ApiError(
            404,
            "not_found",
            f"no try {try_id!r} of job {job_id!r}; ask one with POST "
            f"/v1/fine_tuning/jobs/{job_id}/try",
        )
    return row


def out(row: TryRow, prefix: str) -> TryOut:
    request, result = row.request, row.result or {}
    error = (
        TryError(code=row.error_code or "try_failed", message=row.error_message or "")
        if row.status == tries.FAILED
        else None
    )
    return TryOut(
        id=row.id,
        job_id=row.job_id,
        status=row.status,
        prompts=list(request["prompts"]),
        max_new_tokens=int(request["max_new_tokens"]),
        temperature=float(request["temperature"]),
        seed=int(request["seed"]),
        completions=[TryCompletion(**c) for c in result.get("completions", [])],
        device=result.get("device"),
        base_weights=result.get("base_weights"),
        load_seconds=result.get("load_seconds"),
        generate_seconds=result.get("generate_seconds"),
        error=error,
        created_at=int(row.created_at.timestamp()),
        finished_at=int(row.finished_at.timestamp()) if row.finished_at else None,
        url=f"{prefix}/{row.job_id}/tries/{row.id}",
    )
