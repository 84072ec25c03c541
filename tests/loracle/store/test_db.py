"""The job store opens safely when several processes open a fresh database at once,
as the API, the worker and the embedded runner do when the service first starts."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect

from loracle.store.db import engine_for
from loracle.store.models import Base
from tests.utils.postgres import fresh_database

PROCESSES = 4
ROUNDS = 6


def _open_at(url: str, start_at: float, answers: mp.Queue) -> None:
    from loracle.store.db import engine_for

    while time.time() < start_at:  # line the processes up on the same instant
        pass
    try:
        engine_for(url)
        answers.put("ok")
    except Exception as exc:  # reported to the test, which shows it
        answers.put(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")


def _open_together(url: str) -> list[str]:
    ctx = mp.get_context("spawn")
    answers = ctx.Queue()
    start_at = time.time() + 2.0  # spawned interpreters need a moment to import
    procs = [ctx.Process(target=_open_at, args=(url, start_at, answers)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    return [answers.get(timeout=5) for _ in procs]


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    if request.param == "sqlite":
        yield [f"sqlite:///{tmp_path / f'store-{i}.db'}" for i in range(ROUNDS)]
        return
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(fresh_database()) for _ in range(ROUNDS)]


def test_processes_opening_a_fresh_store_together_all_succeed(fresh_urls: list[str]):
    for url in fresh_urls:
        answers = _open_together(url)
        assert answers == ["ok"] * PROCESSES, f"{url}: {answers}"
        tables = set(inspect(engine_for(url)).get_table_names())
        assert set(Base.metadata.tables) <= tables
        engine_for(url).dispose()
