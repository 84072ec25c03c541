"""The job page's controls on a running job: pause checkpoints it and takes it off its card,
resume continues it, cancel stops it, and the page follows it to the end."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Dialog, expect

from tests.console.conftest import Watched, shot, sign_in
from tests.utils.service import Service

pytestmark = pytest.mark.e2e  # a real API and worker, and a real browser


def test_pause_resume_and_cancel_a_running_job_and_the_page_follows_it(
    browser: Watched, service: Service, tiny_model: Path, good_file: Path
) -> None:
    file_id = service.upload(good_file)["id"]
    job = service.submit(
        {
            "model": str(tiny_model),
            "training_file": file_id,
            "variant": "lora",
            "hyperparameters": {"max_steps": 5000, "seq_len": 32},
        }
    )
    service.wait(job["id"], until=lambda j: j["status"] == "running" and j["step"] > 0)
    page = browser.page
    sign_in(page, next_path=f"/jobs/{job['id']}")
    # The curve has its first points (the attribute is set once one is drawn).
    expect(page.locator("#loss-figure[data-train-points]")).to_be_attached()
    # The API offers pause and resume (its OpenAPI document lists them): a running job can
    # be paused, and a paused one resumed.
    expect(page.get_by_role("button", name="Resume")).to_be_hidden()
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#job-facts .badge")).to_have_text("paused", timeout=60_000)
    expect(page.get_by_role("button", name="Pause")).to_be_hidden()
    assert service.job(job["id"])["status"] == "paused"
    shot(page, "job-paused")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#job-facts .badge")).to_have_text("running", timeout=60_000)
    expect(page.get_by_role("button", name="Pause")).to_be_visible()

    asked: list[str] = []

    def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name="Cancel the job").click()
    assert asked and "Cancel this job?" in asked[0]
    expect(page.locator("#stream-status")).to_contain_text("ended (cancelled)", timeout=60_000)
    expect(page.locator("#job-facts .badge")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel the job")).to_be_hidden()
    assert service.job(job["id"])["status"] == "cancelled"
    shot(page, "job-cancelled")
