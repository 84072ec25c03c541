"""A fresh PostgreSQL database on the machine's server (started by .ci/run), dropped
afterwards. Tests talk to the real server, never a mock."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def fresh_database() -> Iterator[str]:
    import psycopg

    name = f"loracle_test_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        from loracle.store.db import engine_for

        engine_for.cache_clear()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
