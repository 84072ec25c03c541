"""A forked child (a Celery pool process) must not use, nor close, the store connections its
parent opened: it gets connections of its own, and the parent's keep working."""

from __future__ import annotations

import os

from sqlalchemy import text

from loracle.store.db import engine_for
from tests.utils.postgres import fresh_database


def _backend_pid(url: str) -> int:
    with engine_for(url).connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_alone():
    with fresh_database() as url:
        parent = _backend_pid(url)  # a pooled connection, kept open by the pool
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report the server process it talks to, then exit at once
            code = 1
            try:
                os.write(write, str(_backend_pid(url)).encode())
                engine_for(url).dispose()  # what a child's exit does to its pool
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        child = int(os.read(read, 64) or b"0")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child and child != parent, "the child used the parent's connection"
        assert _backend_pid(url) == parent, "the parent's connection was closed by the child"
