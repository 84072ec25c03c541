"""Engine and sessions of the job store."""

from __future__ import annotations

import os
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    # The API and worker processes share one SQLite file: WAL lets readers run
    # beside the writer, and a busy timeout turns lock contention into a short
    # wait instead of "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    _journal_mode_wal(cursor)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _journal_mode_wal(cursor: Any, wait_s: float = 30.0) -> None:
    """Switch a database file to WAL (a no-op once it is: the mode is kept in the file).

    The switch needs an exclusive lock, and SQLite answers "database is locked" at
    once instead of calling the busy handler when another connection holds a lock,
    which is what happens when the API and the worker open a fresh file together.
    So wait for the lock here, as the busy timeout would.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def new_engine(url: str) -> Engine:
    """An engine on the store at ``url``, its schema untouched (`engine_for` migrates)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """The process's engine on the store at ``url``, its schema migrated to head."""
    engine = new_engine(url)
    _engines.add(engine)
    migrate(engine)
    return engine


# Engines this process made. A forked child (a Celery pool process, forked by a worker whose
# main process already uses the store for its fleet heartbeat) inherits their pooled
# connections: two processes talking over one PostgreSQL socket interleave their messages
# ("prepared statement already exists"), and the child closing one ends the parent's
# ("server closed the connection unexpectedly"). SQLAlchemy's documented remedy: in the
# child, drop the inherited pool without closing its connections (dispose(close=False)); the
# child opens its own on first use.
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _forget_inherited_connections() -> None:
    for engine in list(_engines):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)


# Any constant of our own: the key of the PostgreSQL advisory lock that orders migrations.
_SCHEMA_LOCK_KEY = 0x6C6F7261636C65  # "loracle"
MIGRATIONS = Path(__file__).with_name("migrations")
# The revision whose schema `create_all` made before migrations existed.
FIRST_REVISION = "0001"


def migrate(engine: Engine) -> list[str]:
    """Bring the store's schema to the newest migration, safely beside other processes doing
    the same; returns the revisions this call applied (empty when another process, or an
    earlier start, already did).

    The API, the worker and the embedded runner each open the store when they start, so
    after an upgrade several of them reach an old schema together. The whole check and
    upgrade runs under one lock, so a migration runs once: PostgreSQL's advisory lock held
    by the migrating transaction, or SQLite's write lock taken with `BEGIN IMMEDIATE` (its
    driver would otherwise run DDL outside any transaction). The loser waits, then finds the
    schema at head and applies nothing. A database made by `create_all` before migrations
    (tables, no `alembic_version`) is stamped at the first revision, which is that schema,
    and upgraded from there: its jobs stay.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        elif engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        current = MigrationContext.configure(conn).get_current_revision()
        if current == head:
            return []
        config.attributes["connection"] = conn
        if current is None and inspect(conn).has_table("jobs"):
            command.stamp(config, FIRST_REVISION)
            current = FIRST_REVISION
        script = ScriptDirectory.from_config(config)
        applied = [
            rev.revision
            for rev in script.iterate_revisions(head, current or "base")
            if rev.revision != current
        ]
        command.upgrade(config, "head")
    return list(reversed(applied))


@lru_cache(maxsize=8)
def _factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


@contextmanager
def session(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    s = _factory(url)()
    try:
        yield s
        s.commit()
    except BaseException:
        s.rollback()
        raise
    finally:
        s.close()
