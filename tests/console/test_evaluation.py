"""The job page of a run with a validation file shows the worker's comparison of the base
model and the adapter (GET job's `evaluation`) as a table, with the figures the API gives."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.console.conftest import Watched, shot, sign_in
from tests.utils.builders import write_fixed_completion_jsonl
from tests.utils.service import Service

pytestmark = pytest.mark.e2e  # a real API and worker, and a real browser


def test_the_job_page_shows_the_base_against_the_adapter(
    browser: Watched, service: Service, tiny_model: Path, tmp_path: Path
) -> None:
    train = service.upload(write_fixed_completion_jsonl(tmp_path / "train.jsonl", 64, seed=0))
    valid = service.upload(write_fixed_completion_jsonl(tmp_path / "valid.jsonl", 16, seed=1))
    job = service.submit(
        {
            "model": str(tiny_model),
            "training_file": train["id"],
            "validation_file": valid["id"],
            "variant": "lora",
            "hyperparameters": {"max_steps": 30, "seq_len": 32, "learning_rate": 1e-2},
        }
    )
    done = service.wait(job["id"])
    assert done["status"] == "succeeded", service.log_tail()
    evaluation = service.job(job["id"])["evaluation"]
    base, adapter = evaluation["base"], evaluation["adapter"]
    assert evaluation["validation_rows"] == 16 and adapter["loss"] < base["loss"]
    assert base["exact_match"]["rows"] == adapter["exact_match"]["rows"] == 16

    page = browser.page
    sign_in(page, next_path=f"/jobs/{job['id']}")
    panel = page.get_by_role("region", name="Base model against the adapter")
    expect(panel).to_be_visible()
    table = page.locator("#evaluation")
    expect(table.locator("thead th")).to_have_text(["Base model", "Adapter", "Change"])
    expect(table.locator("tbody th")).to_have_text(
        ["Validation loss", "Perplexity", "Exact match (greedy)"]
    )
    loss_row = table.locator("tbody tr").nth(0).locator("td")
    expect(loss_row).to_have_text(
        [f"{base['loss']:.4f}", f"{adapter['loss']:.4f}", f"{evaluation['delta']['loss']:.4f}"]
    )
    for column, found in enumerate((base["exact_match"], adapter["exact_match"])):
        percent = math.floor(100 * found["rate"] + 0.5)  # as JavaScript's Math.round
        expect(table.locator("tbody tr").nth(2).locator("td").nth(column)).to_have_text(
            f"{found['matched']} / 16 ({percent}%)"
        )
    expect(page.locator("#evaluation-note")).to_contain_text("16 validation rows")
    # The validation loss is a point of the curve too.
    expect(page.locator("#loss-figure")).to_have_attribute("data-validation-points", "1")
    shot(page, "job-evaluation")


def test_a_job_without_a_validation_file_shows_no_comparison(
    browser: Watched, service: Service, tiny_model: Path, good_file: Path
) -> None:
    job = service.submit(
        {
            "model": str(tiny_model),
            "training_file": service.upload(good_file)["id"],
            "variant": "lora",
            "hyperparameters": {"max_steps": 2, "seq_len": 32},
        }
    )
    assert service.wait(job["id"])["status"] == "succeeded", service.log_tail()
    page = browser.page
    sign_in(page, next_path=f"/jobs/{job['id']}")
    expect(page.locator("#stream-status")).to_contain_text("ended")
    expect(page.locator("#evaluation-panel")).to_be_hidden()
