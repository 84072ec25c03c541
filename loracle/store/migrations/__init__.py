"""Alembic migrations of the job store (see `loracle.store.db.migrate`)."""
