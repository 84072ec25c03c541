"""The whole flow with the production store: PostgreSQL for jobs, Redis as broker."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.utils.postgres import fresh_database
from tests.utils.service import Service

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pg_service(
    tmp_path_factory: pytest.TempPathFactory, model_root: Path, tiny_model: Path, redis_db: int
) -> Iterator[Service]:
    with fresh_database() as url:
        service = Service.create(
            tmp_path_factory.mktemp("pg"),
            model_root,
            LORACLE_DATABASE_URL=url,
            LORACLE_BROKER_URL=f"redis://127.0.0.1:6379/{redis_db}",
        )
        service.start_api()
        service.start_worker()
        try:
            yield service
        finally:
            service.stop()


def test_job_runs_with_postgresql_as_the_store(
    pg_service: Service, tiny_model: Path, datasets: dict[str, Path]
):
    file_id = pg_service.upload(datasets["prompt_completion"])["id"]
    job = pg_service.submit(
        {
            "model": str(tiny_model),
            "training_file": file_id,
            "variant": "dora",
            "hyperparameters": {"max_steps": 8, "seq_len": 48, "learning_rate": 5e-3},
        }
    )
    done = pg_service.wait(job["id"])
    assert done["status"] == "succeeded", pg_service.log_tail()
    assert not (pg_service.data_dir / "loracle.db").exists(), "the SQLite default was not used"
    statuses = [e["data"]["status"] for e in pg_service.events(job["id"]) if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]


def test_one_job_for_fifty_concurrent_requests_on_postgresql(
    pg_service: Service, tiny_model: Path, datasets: dict[str, Path]
):
    file_id = pg_service.upload(datasets["text"])["id"]
    body = {
        "model": str(tiny_model),
        "training_file": file_id,
        "variant": "lora",
        "hyperparameters": {"max_steps": 2, "seq_len": 32},
    }

    def post(_: int):
        with pg_service.client() as c:
            return c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "pg-fifty"})

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(post, range(50)))
    assert sorted(r.status_code for r in answers) == [200] * 49 + [201]
    assert len({r.json()["id"] for r in answers}) == 1
    assert pg_service.wait(answers[0].json()["id"])["status"] == "succeeded"
