"""The whole console flow in a real browser, against a real API and worker, on the tiny local
model: sign in; ask for advice for a 7B model on a 24 GB card and see every variant's bar and
the card line; upload a file with a bad line and see its line number; upload a good file and
submit a job; watch the loss curve gain points while the job runs; download the adapter."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.console.conftest import ARTIFACTS, Watched, bar_titles, shot, sign_in
from tests.utils.service import Service

pytestmark = pytest.mark.e2e  # a real API and worker, and a real browser

MODEL, CARD = "meta-llama/Llama-2-7b-hf", "rtx-4090"
VARIANTS = bar_titles()

# The memory chart as Chart.js holds it, and how many pixels of the column where the card's
# line should be are drawn in the theme's text colour (the line's), of all in the plot.
READ_MEMORY_CHART = """() => {
  const canvas = document.getElementById("memory-chart");
  const chart = Chart.getChart(canvas);
  const ratio = canvas.width / canvas.clientWidth;
  const line = chart.options.plugins.cardLine.value;
  const x = Math.round(chart.scales.x.getPixelForValue(line) * ratio);
  const top = Math.round(chart.chartArea.top * ratio);
  const height = Math.round((chart.chartArea.bottom - chart.chartArea.top) * ratio);
  const ink = getComputedStyle(document.documentElement).getPropertyValue("--fg").trim();
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(ink.slice(i, i + 2), 16));
  const ctx = canvas.getContext("2d");
  let drawn = 0;
  for (let y = 0; y < height; y++) {
    const hit = [-1, 0, 1].some((dx) => {
      const [pr, pg, pb] = ctx.getImageData(x + dx, top + y, 1, 1).data;
      return Math.abs(pr - r) + Math.abs(pg - g) + Math.abs(pb - b) < 60;
    });
    if (hit) drawn++;
  }
  return {
    labels: chart.data.labels,
    parts: chart.data.datasets.map((d) => d.label),
    stacks: chart.data.labels.map((_, i) => chart.data.datasets.reduce((s, d) => s + d.data[i], 0)),
    line,
    lineShare: drawn / height,
  };
}"""


def _ask_for_advice(page: Page, service: Service) -> None:
    page.get_by_label("Catalog model").select_option(MODEL)
    page.get_by_label("GPU", exact=True).select_option(CARD)
    page.get_by_role("button", name="Ask the advisor").click()
    figure = page.locator("#memory-figure")
    expect(figure).to_have_attribute("data-bars", str(len(VARIANTS)))

    chart: dict[str, Any] = page.evaluate(READ_MEMORY_CHART)
    assert [label.removesuffix(" (recommended)") for label in chart["labels"]] == VARIANTS
    assert chart["parts"] == [
        "Weights",
        "Adapter",
        "Gradients",
        "Optimizer state",
        "Activations",
        "Overhead",
    ]
    # The bars are the API's own figures, stacked: what a client gets for the same profile,
    # for every variant of the registry and every combination the console is given.
    from api.console.endpoints import variants

    given = variants()
    with service.client() as c:
        answer = c.post(
            "/v1/recommendations",
            json={"hardware": {"gpu": CARD}, "model": {"name": MODEL}},
        ).json()
        combos = [
            c.post(
                "/v1/estimates",
                json={"model": {"name": MODEL}, "variant": v, "combine_with": ideas},
            ).json()
            for v, ideas in given["combinations"]
        ]
    totals = [answer["estimates"][v]["total_gib"] for v in given["names"]]
    totals += [e["total_gib"] for e in combos]
    assert len(chart["stacks"]) == len(totals) == len(VARIANTS)
    assert all(abs(s - t) < 0.01 for s, t in zip(chart["stacks"], totals, strict=True)), (
        chart["stacks"],
        totals,
    )
    assert chart["line"] == answer["hardware"]["memory_gib"] == 24
    assert chart["lineShare"] > 0.4, f"the card line is not drawn: {chart['lineShare']:.2f}"
    recommended = next(label for label in chart["labels"] if label.endswith("(recommended)"))
    assert recommended.startswith(answer["label"])

    # The tree: every question answered, the path lit, the deciding leaf marked.
    tree = page.locator("#tree ol.tree > li")
    expect(tree).to_have_count(5)
    answers = [tree.nth(i).get_attribute("data-answer") for i in range(5)]
    assert answers == [s["answer"] for s in answer["decision_path"]]
    expect(page.locator("#tree .leaf.decided").first).to_be_visible()
    expect(page.locator("#tree .evidence").first).not_to_be_empty()
    expect(page.locator("#hyperparameters")).to_contain_text("lora_config.r")


def _drop(page: Page, path: Path) -> None:
    """Drag a file onto the drop zone, as a person does from their file manager."""
    transfer = page.evaluate_handle(
        """([name, text]) => {
          const transfer = new DataTransfer();
          transfer.items.add(new File([text], name, { type: "application/jsonl" }));
          return transfer;
        }""",
        [path.name, path.read_text()],
    )
    page.dispatch_event("#dropzone", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})


def _watch_the_loss_curve(page: Page, service: Service, job_id: str) -> list[tuple[str, int]]:
    """(status, points on the curve) every quarter second, until the stream says the job
    ended."""
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        points = int(page.locator("#loss-figure").get_attribute("data-train-points") or 0)
        status = page.locator("#job-facts .badge").first.inner_text()
        seen.append((status, points))
        if "ended" in page.locator("#stream-status").inner_text():
            return seen
        time.sleep(0.25)
    raise AssertionError(f"the job page never saw its job end\n{service.log_tail()}")


def test_the_whole_flow_on_the_tiny_model(
    browser: Watched,
    service: Service,
    tiny_model: Path,
    good_file: Path,
    bad_file: Path,
    tmp_path: Path,
) -> None:
    page = browser.page

    # 1. Sign in: back to the page asked for, the key in this tab's session storage only.
    sign_in(page, next_path="/")
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Which LoRA variant, and does it fit?"
    )
    assert page.evaluate("() => sessionStorage.getItem('loracle.key')")
    assert page.evaluate("() => Object.keys(localStorage)") in ([], ["loracle.theme"])

    # 2. Advice for a 7B model on a 24 GB card: every variant's bar, and the card's line.
    _ask_for_advice(page, service)
    shot(page, "flow-2-advisor")
    # The README shows this answer: docs/console-advisor.png is a copy of it.
    page.locator("#answer .columns").screenshot(path=str(ARTIFACTS / "readme-advisor.png"))
    page.get_by_role("button", name="Train this").click()
    expect(page).to_have_url(f"{service.url}/jobs/new")
    expect(page.locator("#job-model")).to_have_value(MODEL)
    expect(page.locator("#job-variant")).to_have_value("auto")
    expect(page.locator("#hyperparameters-lora_rank")).to_have_value("16")

    # 3. A file with a bad line, dropped on the Data page: its line number and the fix.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Data").click()
    # The drop zone is in the HTML before data.js (a module, run at DOMContentLoaded) listens
    # on it: a drop dispatched in between is lost.
    expect(page).to_have_url(f"{service.url}/data")
    page.wait_for_load_state("domcontentloaded")
    browser.expect_http(422, "/v1/files")
    _drop(page, bad_file)
    problems = page.locator("#problems-table tbody tr")
    expect(problems).to_have_count(1)
    expect(problems.first.locator("th")).to_have_text("3")
    expect(problems.first.locator("td")).to_contain_text("give each row one of these")
    expect(page.locator("#upload-problems")).to_contain_text("broken.jsonl was not stored")
    shot(page, "flow-3-data-bad-line")

    # 4. A good file: its rows; then the job, from the advisor's form, on the tiny model.
    _drop(page, good_file)
    result = page.locator("#upload-result")
    expect(result).to_contain_text("64 rows, format text")
    page.get_by_role("link", name="Train on this file").click()
    expect(page.locator("#draft-note")).to_contain_text("Filled in from the advisor")
    stored = page.locator("#job-training-file").input_value()
    assert stored.startswith("file-")
    page.get_by_label("Model", exact=True).fill(str(tiny_model))
    page.get_by_label("Max steps").fill("30")
    # Two micro batches a step: slow enough, even on an idle machine, for the page to see
    # the curve grow between the worker's writes (every 0.5 s).
    page.get_by_label("Gradient accumulation steps").fill("2")
    page.get_by_label("Sequence length (tokens)").fill("48")
    page.get_by_label("Checkpoint every (steps)").fill("10")
    # The advice was for a card in bf16; this worker is a CPU.
    page.get_by_label("Precision").select_option("auto")
    shot(page, "flow-4-job-form")
    page.get_by_role("button", name="Submit the job").click()
    page.wait_for_url(f"{service.url}/jobs/job-*")
    job_id = page.locator("#job-id").inner_text()

    # 5. The loss curve gains points while the job runs, streamed from its events.
    seen = _watch_the_loss_curve(page, service, job_id)
    # The curve grew from some points to more, while the page said "running".
    while_running = {points for status, points in seen if status == "running" and points > 0}
    assert len(while_running) >= 2, seen
    job = service.job(job_id)
    assert job["status"] == "succeeded", service.log_tail()
    expect(page.locator("#loss-figure")).to_have_attribute("data-train-points", "30")
    expect(page.locator("#job-progress-label")).to_contain_text("step 30 of 30")
    expect(page.locator("#checkpoints")).to_contain_text("step 10")
    expect(page.locator("#decision ol.tree > li")).to_have_count(5)
    # A CPU run: the measurement is named for what it is, beside the card's estimate.
    expect(page.locator("#memory")).to_contain_text("Measured process memory growth (CPU run)")
    expect(page.locator("#memory")).to_contain_text(job["device_name"])
    expect(page.locator("#memory-note")).to_contain_text("not compared")
    expect(page.locator("#events li").last).to_contain_text("training finished")
    shot(page, "flow-5-job")
    page.locator("main .columns").first.screenshot(path=str(ARTIFACTS / "readme-job.png"))

    # 6. The adapter, downloaded through the page, is the one the API serves.
    with page.expect_download() as info:
        page.get_by_role("button", name="Download adapter_model.safetensors").click()
    saved = tmp_path / "adapter_model.safetensors"
    info.value.save_as(saved)
    with service.client() as c:
        served = c.get(f"/v1/jobs/{job_id}/artifacts/adapter_model.safetensors").content
    assert saved.read_bytes() == served and len(served) > 1000

    # The other pages see the finished job and what it measured of the file.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Jobs").click()
    row = page.locator(f"#jobs tr[data-job='{job_id}']")
    expect(row.locator(".badge")).to_have_text("succeeded")
    expect(row).to_contain_text("100%")
    shot(page, "flow-6-jobs")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Data").click()
    expect(page.locator(f"#files tr[data-file='{stored}']")).to_contain_text(str(tiny_model))
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Fleet").click()
    expect(page.locator("#fleet-note")).to_contain_text("Workers as the server lists them")
    with service.client() as c:
        listed = c.get("/v1/workers").json()["data"]
    workers = page.locator("#workers tbody tr")
    expect(workers).to_have_count(len(listed))
    expect(workers.first).to_contain_text(listed[0]["id"])
    expect(page.locator("#queued-empty")).to_be_visible()
    shot(page, "flow-6-fleet")
