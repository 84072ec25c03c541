"""Alembic's environment for the job store. Migrations run on the connection
`loracle.store.db.migrate` hands over (under its lock), never on one of their own.

New migrations: `alembic -c loracle/store/migrations/alembic.ini -x url=<database at head>
revision --autogenerate -m "what changes"` (see docs/operations.md). SQLite cannot alter a
column in place, so migrations render in batch mode (copy-and-move), which PostgreSQL runs
as plain ALTERs.
"""

from __future__ import annotations

from alembic import context

from loracle.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    from sqlalchemy import create_engine

    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database: alembic -x url=sqlite:///scratch.db ...")
    connection = create_engine(url).connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
