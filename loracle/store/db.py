"""Engine and sessions of the job store."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from loracle.store.models import Base


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


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    create_schema(engine)
    return engine


# Any constant of our own: the key of the PostgreSQL advisory lock that orders schema creation.
_SCHEMA_LOCK_KEY = 0x6C6F7261636C65  # "loracle"


def create_schema(engine: Engine) -> None:
    """Create the tables that are missing, safely beside other processes doing the same.

    The API, the worker and the embedded runner each open the store when they start,
    so on a fresh database they race to create it. ``create_all`` checks, then
    creates: two processes both see no table and the second CREATE fails
    (PostgreSQL: a unique violation on ``pg_type_typname_nsp_index``; SQLite:
    "table ... already exists"). One transaction under a lock makes the check and
    the creation atomic: a transaction-scoped advisory lock on PostgreSQL, the write
    lock of ``BEGIN IMMEDIATE`` on SQLite (whose driver would otherwise run the DDL
    outside any transaction). The loser waits, then finds the tables there.
    """
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        elif engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        Base.metadata.create_all(conn)


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
