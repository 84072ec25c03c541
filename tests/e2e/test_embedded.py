"""The same flow on the embedded default: no Redis, kombu's filesystem broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.utils.service import (
    Service,
    assert_adapter_changes_logits,
    assert_loss_fell,
    download_artifacts,
)

pytestmark = pytest.mark.e2e


def test_embedded_broker_runs_a_job(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    model_root: Path,
    tiny_model: Path,
    datasets: dict[str, Path],
):
    service = Service.create(tmp_path_factory.mktemp("embedded"), model_root)
    assert "LORACLE_BROKER_URL" not in service.env
    service.start_api()
    service.start_worker()
    try:
        file_id = service.upload(datasets["messages"])["id"]
        job = service.submit(
            {
                "model": str(tiny_model),
                "training_file": file_id,
                "variant": "qlora",
                "combine_with": ["loraplus"],
                "hyperparameters": {"max_steps": 12, "seq_len": 48, "learning_rate": 5e-3},
            }
        )
        done = service.wait(job["id"])
        assert done["status"] == "succeeded", service.log_tail()
        broker = service.data_dir / "broker"
        assert (broker / "queue").is_dir() and (broker / "control").is_dir()
        assert not (Path.cwd() / "control").exists(), "broker state leaked into the cwd"
        with service.client() as c:
            metrics = json.loads(c.get(f"/v1/jobs/{job['id']}/artifacts/metrics.json").content)
        assert len(metrics["losses"]) == 12
        assert_loss_fell([step["loss"] for step in metrics["losses"]])
        adapter = download_artifacts(service, job["id"], tmp_path)
        assert_adapter_changes_logits(tiny_model, adapter)
    finally:
        service.stop()
