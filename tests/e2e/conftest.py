"""Fixtures for end-to-end tests: real services (Redis from the machine, uvicorn and Celery
worker processes) over the shared tiny model (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.service import Service, flush_redis_db


@pytest.fixture(scope="module")
def redis_service(
    tmp_path_factory: pytest.TempPathFactory, model_root: Path, tiny_model: Path, redis_db: int
) -> Iterator[Service]:
    service = Service.create(
        tmp_path_factory.mktemp("redis-service"),
        model_root,
        LORACLE_BROKER_URL=f"redis://127.0.0.1:6379/{redis_db}",
    )
    service.start_api()
    service.start_worker()
    try:
        yield service
    finally:
        service.stop()
        flush_redis_db(redis_db)
