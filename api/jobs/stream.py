"""A job's events as server-sent events, live: GET /v1/jobs/{id}/events/stream.

The worker writes events into the job store from its own process, and the store is the one
source of truth, so the stream reads the store: every ``stream_poll_s``, in a short session on
the thread pool. Between reads an open stream holds no database connection (the session's
connection goes back to the pool at once) and no thread; waiting is an ``asyncio.sleep``.
A page watching a job costs one indexed query every half second, whatever the job's length.

On the wire (the WHATWG server-sent events format), one message per event::

    id: 42
    data: {"id": 42, "type": "metrics", "message": "step 3/24 loss 2.1", "data": {...}, ...}

the same objects GET /v1/jobs/{id}/events lists; a comment line (``: keep-alive``) after
``HEARTBEAT_S`` of silence, so proxies keep an idle connection open; and, once the job has
reached a terminal status and every event before it was sent, ``event: end`` with
``{"status": ...}``, and the stream closes. To resume, pass the last id seen as ``after`` or
in ``Last-Event-ID`` (what a browser's EventSource sends when it reconnects).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from advisor.errors import Problem
from api.errors import ApiError
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.db import session
from loracle.store.models import EventRow, JobRow

HEARTBEAT_S = 15.0
# Events per read: a job's whole history (a metrics event per logging step) arrives in a
# few reads when a page opens on a long job, without one read holding thousands of rows.
BATCH = 500
LAST_EVENT_ID = "Last-Event-ID"


def event_out(e: EventRow) -> dict[str, Any]:
    """One event as every events endpoint shows it."""
    return {
        "id": e.pk,
        "object": "fine_tuning.job.event",
        "created_at": int(e.created_at.timestamp()),
        "level": e.level,
        "type": e.type,
        "message": e.message,
        "data": e.data or {},
    }


def resume_after(after: int | None, last_event_id: str | None) -> int | None:
    """Where the stream starts: after the event ``Last-Event-ID`` names (a reconnecting
    EventSource sends it, and it is newer than the URL's ``after``), else ``after``."""
    if last_event_id is None or not last_event_id.strip():
        return after
    value = last_event_id.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise ApiError(
            422,
            "invalid_request",
            f"{LAST_EVENT_ID}: got {value[:40]!r}; send the id of the last event received "
            "(a non-negative integer), or leave the header out to start from the first event",
            [Problem(LAST_EVENT_ID, "must be an event id (a non-negative integer)", value[:40])],
        )
    return int(value)


def _owned(url: str, job_id: str, owner: str | None) -> bool:
    with session(url) as s:
        return store.get_job(s, job_id, owner) is not None


async def check_visible(settings: Settings, job_id: str, owner: str | None) -> None:
    """404 before the stream starts, when the job is not the caller's (or does not exist)."""
    if not await run_in_threadpool(_owned, settings.resolved_database_url, job_id, owner):
        raise ApiError(404, "not_found", f"no job {job_id!r}; list yours with GET /v1/jobs")


def read_batch(
    url: str, job_id: str, after: int | None
) -> tuple[str | None, list[dict[str, Any]], bool]:
    """The job's status (None: the job is gone), then up to ``BATCH`` events after ``after``
    and whether more wait.

    Status first: a status change commits together with its event, so when the status read
    is terminal, the events read after it include every event of the job."""
    with session(url) as s:
        status = s.scalar(select(JobRow.status).where(JobRow.id == job_id))
        rows, more = store.list_events(s, job_id, BATCH, after)
        return status, [event_out(e) for e in rows], more


def _message(event: dict[str, Any]) -> str:
    return f"id: {event['id']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


async def event_stream(settings: Settings, job_id: str, after: int | None) -> AsyncIterator[str]:
    url = settings.resolved_database_url
    # How long a browser's EventSource waits before it reconnects, in ms.
    yield "retry: 2000\n\n"
    quiet_since = time.monotonic()
    while True:
        status, events, more = await run_in_threadpool(read_batch, url, job_id, after)
        for event in events:
            yield _message(event)
        if events:
            after = events[-1]["id"]
            quiet_since = time.monotonic()
        if more:
            continue
        if status is None or status in store.TERMINAL:
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        if time.monotonic() - quiet_since >= HEARTBEAT_S:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(settings.stream_poll_s)
