"""Fixtures for end-to-end tests: a tiny model and data files built offline, and
real services (Redis from the machine, uvicorn and Celery worker processes)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.builders import build_tiny_llama, write_jsonl
from tests.utils.service import Service, flush_redis_db, redis_available


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(model_root: Path) -> Path:
    return build_tiny_llama(model_root / "tiny-llama")


@pytest.fixture(scope="session")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("datasets")
    return {
        fmt: write_jsonl(folder / f"{fmt}.jsonl", fmt, n_rows=64, seed=0)
        for fmt in ("text", "prompt_completion", "messages")
    }


@pytest.fixture(scope="session")
def redis_db() -> int:
    """A Redis database of its own on the machine's server (started by .ci/run)."""
    assert redis_available(), (
        "Redis is not running on 127.0.0.1:6379; start it (scripts/services.sh does)"
    )
    db = random.randint(1, 15)
    flush_redis_db(db)
    return db


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
