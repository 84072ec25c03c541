"""GET /v1/jobs/{id}/events/stream: a job's events as server-sent events, in-process against
a real SQLite store. The browser test (tests/console) follows a real worker's job with it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from api.jobs import stream
from api.jobs.schemas import JobCreate
from api.jobs.service import create_job
from api.security import digest
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.db import engine_for, session
from tests.utils.api import KEY_A, KEY_B, client_for, error_code, register_worker, settings_for
from tests.utils.builders import add_placeholder_file
from tests.utils.hub import hub_that_has

OWNER_A = digest(KEY_A)


@pytest.fixture(autouse=True)
def _hub(monkeypatch):
    """The jobs here name the hub id org/model, which submission checks on the hub."""
    with hub_that_has(monkeypatch, "org/model"):
        yield


def _new_job(settings: Settings, owner: str | None = OWNER_A) -> str:
    with session(settings.resolved_database_url) as s:
        file_id = add_placeholder_file(s, owner)
        body = JobCreate(model="org/model", training_file=file_id, variant="lora")
        return create_job(s, settings, body, owner).id


def _start(settings: Settings, job_id: str) -> int:
    with session(settings.resolved_database_url) as s:
        token = store.acquire(s, job_id, "test:1", 60, 3)
    assert token is not None
    return token


def _metrics(settings: Settings, job_id: str, step: int) -> None:
    with session(settings.resolved_database_url) as s:
        store.add_event(s, job_id, "metrics", f"step {step}", {"step": step, "loss": 3.0 / step})


def _finish(settings: Settings, job_id: str, token: int, status: str = "succeeded") -> None:
    with session(settings.resolved_database_url) as s:
        assert store.finish(s, job_id, token, status) == status


def parse(body: str) -> list[dict[str, Any]]:
    """The messages of an event stream, as {"id", "event", "data"} (comments dropped)."""
    out = []
    for block in body.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            out.append(fields)
    return out


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = settings_for(tmp_path / "data", stream_poll_s=0.05)
    register_worker(settings)  # jobs are placed on its queue, as with a running worker
    return settings


@pytest.fixture
def finished(settings: Settings) -> str:
    job_id = _new_job(settings)
    token = _start(settings, job_id)
    for step in (1, 2, 3):
        _metrics(settings, job_id, step)
    _finish(settings, job_id, token)
    return job_id


def test_a_finished_jobs_stream_sends_every_event_then_ends(settings, finished):
    with client_for(settings) as c:
        r = c.get(f"/v1/jobs/{finished}/events/stream")
        listed = c.get(f"/v1/jobs/{finished}/events").json()["data"]
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    messages = parse(r.text)
    *events, end = messages
    assert [m["data"] for m in events] == listed  # the same objects the list endpoint gives
    assert [int(m["id"]) for m in events] == [e["id"] for e in listed]
    assert [e["type"] for e in listed] == [
        "status",
        "status",
        "metrics",
        "metrics",
        "metrics",
        "status",
    ]
    assert end == {"event": "end", "data": {"status": "succeeded"}}


def test_after_and_last_event_id_resume_and_the_header_wins(settings, finished):
    with client_for(settings) as c:
        ids = [e["id"] for e in c.get(f"/v1/jobs/{finished}/events").json()["data"]]
        url = f"/v1/jobs/{finished}/events/stream"
        by_query = parse(c.get(url, params={"after": ids[2]}).text)
        by_header = parse(
            c.get(url, params={"after": ids[0]}, headers={"Last-Event-ID": str(ids[3])}).text
        )
    assert [int(m["id"]) for m in by_query[:-1]] == ids[3:]
    assert [int(m["id"]) for m in by_header[:-1]] == ids[4:]
    assert by_header[-1]["event"] == "end"


@pytest.mark.parametrize("header", ["abc", "-1", "1.5", "1e3", "9" * 40])
def test_a_bad_last_event_id_is_a_422_that_names_the_header(settings, finished, header):
    with client_for(settings) as c:
        r = c.get(f"/v1/jobs/{finished}/events/stream", headers={"Last-Event-ID": header})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["problems"][0]["field"] == "Last-Event-ID"
    assert "last event" in body["detail"]


def test_the_stream_is_the_owners_alone(settings, finished):
    url = f"/v1/jobs/{finished}/events/stream"
    with client_for(settings, key=None) as anonymous:
        assert anonymous.get(url).status_code == 401
    with client_for(settings, key=KEY_B) as b:
        r = b.get(url)
        assert r.status_code == 404 and error_code(r.json()) == "not_found"
        assert b.get("/v1/jobs/job-missing/events/stream").status_code == 404
    with client_for(settings) as a:
        r = a.get(url, params={"after": -1})
        assert r.status_code == 422 and r.json()["problems"][0]["field"] == "after"


def test_a_running_jobs_stream_delivers_new_events_and_ends_with_the_job(settings):
    job_id = _new_job(settings)
    token = _start(settings, job_id)

    async def follow() -> list[dict[str, Any]]:
        gen = stream.event_stream(settings, job_id, None)
        received = ""
        async for chunk in gen:
            received += chunk
            got = parse(received)
            # Each write lands while the stream is already open and waiting.
            if len(got) == 2:  # the two status events: created, running
                await asyncio.to_thread(_metrics, settings, job_id, 1)
            elif len(got) == 3:
                await asyncio.to_thread(_metrics, settings, job_id, 2)
            elif len(got) == 4:
                await asyncio.to_thread(_finish, settings, job_id, token, "failed")
        return parse(received)

    messages = asyncio.run(asyncio.wait_for(follow(), timeout=20))
    assert [m.get("event", m["data"].get("type")) for m in messages] == [
        "status",
        "status",
        "metrics",
        "metrics",
        "status",
        "end",
    ]
    assert messages[-1]["data"] == {"status": "failed"}


def test_a_waiting_stream_holds_no_database_connection(tmp_path):
    # A long poll interval: after its first read the stream sits in its wait.
    settings = settings_for(tmp_path / "data", stream_poll_s=30)
    register_worker(settings)
    job_id = _new_job(settings)
    _start(settings, job_id)
    pool = engine_for(settings.resolved_database_url).pool

    async def open_and_wait() -> tuple[int, int, bool]:
        gen = stream.event_stream(settings, job_id, None)
        assert await anext(gen) == "retry: 2000\n\n"
        first = parse(await anext(gen) + await anext(gen))
        waiting = asyncio.ensure_future(anext(gen))
        await asyncio.sleep(0.5)
        checked_out, done = pool.checkedout(), waiting.done()
        waiting.cancel()  # what a client that goes away does to it
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await gen.aclose()
        return len(first), checked_out, done

    got, checked_out, done = asyncio.run(open_and_wait())
    assert got == 2
    assert not done, "nothing new happened: the stream must still be waiting"
    assert checked_out == 0
