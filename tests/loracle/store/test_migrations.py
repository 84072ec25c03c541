"""Schema migrations (Alembic): an old store keeps its jobs through an upgrade, and two
processes that open an old or fresh store at once run each migration once. On SQLite and on
the machine's PostgreSQL."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, func, insert, select, text

from loracle.store.db import FIRST_REVISION, MIGRATIONS, migrate, new_engine
from tests.utils.postgres import fresh_database


def _head() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with fresh_database() as url:
        yield url


def _legacy_store(url: str) -> None:
    """A store as `create_all` made it before migrations existed: the first revision's
    tables, no alembic_version, and a file, a job and its events in it."""
    engine = new_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, FIRST_REVISION)
        conn.execute(text("DROP TABLE alembic_version"))
    tables = MetaData()
    tables.reflect(engine)
    stamp = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(tables.tables["files"]).values(
                id="file-000000000000000000000001",
                owner="alice",
                filename="t.jsonl",
                purpose="fine-tune",
                bytes=10,
                rows=1,
                format="text",
                sha256="0" * 64,
                path="/x",
                token_stats={},
                created_at=stamp,
            )
        )
        conn.execute(
            insert(tables.tables["jobs"]).values(
                id="job-000000000000000000000001",
                owner="alice",
                status="succeeded",
                model="org/name",
                training_file="file-000000000000000000000001",
                variant="lora",
                combine_with=[],
                requested_variant="lora",
                hyperparameters={"max_steps": 3},
                created_at=stamp,
                step=3,
                attempts=1,
                fencing_token=1,
                loss=1.5,
            )
        )
        for i in range(3):
            conn.execute(
                insert(tables.tables["events"]).values(
                    job_id="job-000000000000000000000001",
                    created_at=stamp,
                    type="status",
                    message=f"event {i}",
                    data={"i": i},
                    level="info",
                )
            )
    engine.dispose()


def test_an_old_store_keeps_its_jobs_through_the_upgrade(store_url: str):
    _legacy_store(store_url)
    engine = new_engine(store_url)
    migrate(engine)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == _head()
    tables = MetaData()
    tables.reflect(engine)
    with engine.connect() as conn:
        job = conn.execute(select(tables.tables["jobs"])).mappings().one()
        events = conn.execute(select(func.count()).select_from(tables.tables["events"])).scalar()
    assert (job["id"], job["status"], job["loss"], job["hyperparameters"]) == (
        "job-000000000000000000000001",
        "succeeded",
        1.5,
        {"max_steps": 3},
    )
    assert events == 3
    assert migrate(engine) == []  # at head: nothing more to apply
    engine.dispose()


def _migrate_at(url: str, start_at: float, answers: mp.Queue) -> None:
    from loracle.store.db import migrate, new_engine

    while time.time() < start_at:  # line the processes up on the same instant
        pass
    try:
        answers.put(migrate(new_engine(url)))
    except Exception as exc:  # reported to the test, which shows it
        answers.put(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")


@pytest.mark.parametrize("legacy", [False, True], ids=["fresh", "legacy"])
def test_two_processes_migrating_at_once_run_each_migration_once(store_url: str, legacy: bool):
    if legacy:
        _legacy_store(store_url)
    ctx = mp.get_context("spawn")
    answers = ctx.Queue()
    start_at = time.time() + 2.0  # spawned interpreters need a moment to import
    procs = [ctx.Process(target=_migrate_at, args=(store_url, start_at, answers)) for _ in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    results = [answers.get(timeout=5) for _ in procs]
    assert all(isinstance(r, list) for r in results), results
    applied = [r for r in results if r]
    # One process ran the migrations, the other found the schema at head. A legacy store at
    # the first revision needs only a stamp, which runs nothing.
    assert len(applied) == (0 if legacy and _head() == FIRST_REVISION else 1), results
    with new_engine(store_url).connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == _head()


def test_the_migrations_make_the_models_schema(store_url: str):
    """A store at head has exactly the tables and columns of loracle/store/models.py: a
    model changed without a migration fails here (what `alembic check` reports)."""
    from alembic.autogenerate import compare_metadata

    from loracle.store.models import Base

    engine = new_engine(store_url)
    migrate(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()
