"""The job store: the source of truth for every file and job (SQLAlchemy 2;
SQLite by default, PostgreSQL in production). The broker only carries "job X is
ready to run"; a job is never known only to the broker."""
