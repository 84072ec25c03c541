"""The advisor page's other inputs and answers: a pasted config.json, a local model
directory (read in the browser), a bad field, and a model that fits nowhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.console.conftest import BARS, Watched, shot, sign_in
from tests.utils.service import Service

pytestmark = pytest.mark.e2e  # a real API and worker, and a real browser


def _answered(page: Page, bars: int = BARS) -> None:
    expect(page.locator("#memory-figure")).to_have_attribute("data-bars", str(bars))


def _paste_config(page: Page, text: str) -> None:
    sign_in(page)
    page.get_by_label("Paste a config.json").check()
    page.get_by_label("config.json", exact=True).fill(text)
    page.get_by_role("button", name="Ask the advisor").click()


def test_a_pasted_config_is_advised_like_a_catalog_model(
    browser: Watched, tiny_model: Path
) -> None:
    page = browser.page
    _paste_config(page, (tiny_model / "config.json").read_text())
    expect(page.get_by_label("Catalog model")).to_be_hidden()
    _answered(page)
    expect(page.locator("#answer-summary .badge")).to_have_text("fits")
    # "Train this" names the pick: the server knows no model by a pasted config.
    page.get_by_role("button", name="Train this").click()
    expect(page.locator("#job-variant")).not_to_have_value("auto")
    expect(page.locator("#job-model")).to_have_value("")


def test_a_local_model_directory_is_read_in_the_browser(browser: Watched, tiny_model: Path) -> None:
    page = browser.page
    sign_in(page)
    page.get_by_label("A local model directory").check()
    page.get_by_label("Model directory", exact=True).set_input_files(tiny_model)
    expect(page.locator("#model-dir-help")).to_contain_text("Read tiny-llama/config.json (llama)")
    page.get_by_role("button", name="Ask the advisor").click()
    _answered(page)
    expect(page.locator("#answer-title")).to_contain_text("custom llama")
    # Only config.json was read: no upload of the folder's weights.
    assert ("POST", "/v1/files") not in browser.requests
    assert ("POST", "/v1/recommendations") in browser.requests


def test_a_bad_config_and_a_bad_setting_are_shown_at_their_fields(
    browser: Watched, service: Service
) -> None:
    page = browser.page
    _paste_config(page, '{"model_type": "llama",')
    expect(page.locator("#model-config-problem")).to_contain_text("is not valid JSON")
    expect(page.get_by_label("config.json", exact=True)).to_have_attribute("aria-invalid", "true")

    # The server's own 422 names the field; the page marks that input.
    page.get_by_label("From the catalog").check()
    page.get_by_label("Sequence length (tokens)").fill("0")
    browser.expect_http(422, "/v1/recommendations")
    page.get_by_role("button", name="Ask the advisor").click()
    problem = page.locator("#training-seq_len-problem")
    expect(problem).to_contain_text("greater than or equal to 1")
    expect(page.get_by_label("Sequence length (tokens)")).to_be_focused()
    shot(page, "advisor-bad-setting")


def test_when_nothing_fits_the_remedies_are_listed(browser: Watched) -> None:
    page = browser.page
    sign_in(page)
    page.get_by_label("Catalog model").select_option("meta-llama/Llama-2-13b-hf")
    page.get_by_label("GPU", exact=True).select_option("t4")
    page.get_by_label("Sequence length (tokens)").fill("4096")
    page.get_by_label("Gradient checkpointing").uncheck()
    page.get_by_role("button", name="Ask the advisor").click()
    _answered(page)
    expect(page.locator("#answer-summary .badge")).to_have_text("does not fit")
    remedies = page.locator("#remedies-panel")
    expect(remedies).to_be_visible()
    expect(remedies.locator("li").first).to_contain_text("turn on gradient checkpointing")
    expect(remedies.locator("li .badge").first).to_have_text("fits")
    # The memory question answered "no", and every bar is over the card's line.
    last = page.locator("#tree ol.tree > li").last
    expect(last).to_have_attribute("data-answer", "no")
    expect(last.locator(".leaf.decided")).to_contain_text("still over the card")
    assert page.locator("#memory-table tbody tr.over").count() == BARS
    shot(page, "advisor-nothing-fits")

    # Where no change is enough, the verdict says so.
    page.get_by_label("Catalog model").select_option("meta-llama/Llama-2-70b-hf")
    page.get_by_role("button", name="Ask the advisor").click()
    expect(page.locator("#verdict")).to_contain_text("no single card of this size")


def test_the_form_is_kept_when_the_reader_comes_back(browser: Watched) -> None:
    page = browser.page
    sign_in(page)
    page.get_by_label("GPU", exact=True).select_option("a100-80gb")
    page.get_by_label("What matters most").select_option("speed")
    page.get_by_role("button", name="Ask the advisor").click()
    _answered(page)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Jobs").click()
    page.go_back()
    expect(page.get_by_label("GPU", exact=True)).to_have_value("a100-80gb")
    expect(page.get_by_label("What matters most")).to_have_value("speed")
    stored = json.loads(page.evaluate("() => sessionStorage.getItem('loracle.advice.profile')"))
    assert stored["profile"]["goal"]["priority"] == "speed"


def test_where_the_adapter_is_served_adds_its_step_to_the_tree(browser: Watched) -> None:
    page = browser.page
    sign_in(page)
    page.get_by_label("Catalog model").select_option("meta-llama/Llama-2-7b-hf")
    page.get_by_label("GPU", exact=True).select_option("a100-80gb")
    page.get_by_label("What matters most").select_option("quality")
    page.get_by_label("LoRA has shown a quality gap").check()
    expect(page.get_by_label("Where the adapter will be served")).to_have_value("")
    page.get_by_label("Where the adapter will be served").select_option("vllm")
    page.get_by_role("button", name="Ask the advisor").click()
    _answered(page)
    # the tree's four questions, the fit, then vLLM's step: DoRA kept, merged before serving
    tree = page.locator("#tree ol.tree > li")
    expect(tree).to_have_count(6)
    expect(tree.last).to_have_attribute("data-answer", "no")
    expect(tree.last).to_contain_text("Does vLLM load the DoRA adapter as it is?")
    expect(page.locator("#notes")).to_contain_text("merge a DoRA adapter before serving with vLLM")
