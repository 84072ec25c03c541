"""Every page, in the light and the dark theme, on a desktop and a phone-sized screen: axe-core
finds no accessibility violation (labels, names, contrast, landmarks), nothing is wider than
the screen, and a screenshot of each is kept as a test artifact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, Playwright, expect

from tests.console.conftest import BARS, DESKTOP, PHONE, open_browser, shot, sign_in
from tests.utils.service import Service

pytestmark = pytest.mark.e2e  # a real API and worker, and a real browser

# WCAG 2.1 A and AA, and axe's best practices (landmarks, one h1, heading order).
AXE_OPTIONS = {
    "runOnly": {
        "type": "tag",
        "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"],
    },
    "resultTypes": ["violations"],
}


@pytest.fixture(scope="module")
def finished_job(service: Service, tiny_model: Path, good_file: Path) -> dict[str, Any]:
    """A short job with the advisor's decision and a checkpoint, finished, for the job page."""
    file_id = service.upload(good_file)["id"]
    job = service.submit(
        {
            "model": str(tiny_model),
            "training_file": file_id,
            "validation_file": file_id,
            "variant": "auto",
            "profile": {"hardware": {"gpu": "t4"}, "goal": {"priority": "memory"}},
            "hyperparameters": {"max_steps": 4, "seq_len": 32, "checkpoint_steps": 2},
        }
    )
    done = service.wait(job["id"])
    assert done["status"] == "succeeded", service.log_tail()
    return done


def _ready(page: Page, path: str) -> None:
    """Open `path` and wait for what its data calls fill in."""
    page.goto(path)
    if path == "/":
        page.get_by_role("button", name="Ask the advisor").click()
        expect(page.locator("#memory-figure")).to_have_attribute("data-bars", str(BARS))
    elif path == "/data":
        expect(page.locator("#files tbody tr").first).to_be_visible()
    elif path == "/jobs":
        expect(page.locator("#jobs tbody tr").first).to_be_visible()
    elif path == "/jobs/new":
        expect(page.locator("#job-training-file option").nth(1)).to_be_attached()
    elif path.startswith("/jobs/"):
        expect(page.locator("#stream-status")).to_contain_text("ended")
        expect(page.locator("#artifacts button").first).to_be_visible()
        # The job had a validation file: its loss is a point of its own on the curve.
        expect(page.locator("#loss-figure")).to_have_attribute("data-validation-points", "1")
    elif path == "/fleet":
        expect(page.locator("#counts dd").first).to_be_visible()


@pytest.fixture(params=["light", "dark"])
def theme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["desktop", "phone"])
def screen(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def themed_page(
    playwright_driver: Playwright, service: Service, tmp_path: Path, theme: str, screen: str
) -> Iterator[tuple[Page, Any]]:
    context, watched = open_browser(
        playwright_driver,
        service,
        tmp_path / "profile",
        viewport=PHONE if screen == "phone" else DESKTOP,
        color_scheme=theme,  # the system's preference: the pages follow it
    )
    try:
        yield watched.page, watched
        watched.check()
    finally:
        context.close()


def test_every_page_is_accessible_fits_the_screen_and_is_kept_as_a_screenshot(
    themed_page: tuple[Page, Any], finished_job: dict[str, Any], theme: str, screen: str
) -> None:
    page, _ = themed_page
    axe = Axe()
    pages = [
        "/sign-in",
        "/",
        "/data",
        "/jobs",
        "/jobs/new",
        f"/jobs/{finished_job['id']}",
        "/fleet",
    ]
    name = {f"/jobs/{finished_job['id']}": "job"}
    page.goto(pages[0])
    assert page.evaluate("() => document.documentElement.dataset.theme") == theme
    failures = []
    for path in pages:
        if path != "/sign-in" and path == pages[1]:
            sign_in(page, next_path="/")
        _ready(page, path)
        label = name.get(path) or path.strip("/").replace("/", "-") or "advisor"
        shot(page, f"page-{label}-{theme}-{screen}")
        results = axe.run(page, options=AXE_OPTIONS)
        if results.violations_count:
            failures.append(f"{path}:\n{results.generate_report()}")
        # Nothing sideways on a phone: the page is no wider than its screen (a wide table
        # scrolls inside its own box).
        overflow = page.evaluate("() => document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than the {screen} screen"
    assert not failures, "\n".join(failures)


def test_the_theme_button_switches_and_remembers(
    playwright_driver: Playwright, service: Service, tmp_path: Path
) -> None:
    context, watched = open_browser(playwright_driver, service, tmp_path / "profile")
    page = watched.page
    try:
        sign_in(page, next_path="/jobs")
        button = page.get_by_role("button", name="Dark theme")
        expect(button).to_have_attribute("aria-pressed", "false")
        button.focus()
        page.keyboard.press("Enter")
        expect(button).to_have_attribute("aria-pressed", "true")
        assert page.evaluate("() => document.documentElement.dataset.theme") == "dark"
        background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(18, 20, 23)"
        page.goto("/fleet")
        assert page.evaluate("() => document.documentElement.dataset.theme") == "dark"
        watched.check()
    finally:
        context.close()


def test_the_keyboard_reaches_every_control_in_order(
    playwright_driver: Playwright, service: Service, tmp_path: Path
) -> None:
    """Tab from the top of the Data page: the skip link first, then the navigation, and the
    file chooser is reachable without a mouse."""
    context, watched = open_browser(playwright_driver, service, tmp_path / "profile")
    page = watched.page
    try:
        sign_in(page, next_path="/data")
        expect(page.locator("#files-empty, #files tbody tr").first).to_be_attached()
        reached = []
        for _ in range(12):
            page.keyboard.press("Tab")
            reached.append(
                page.evaluate(
                    "() => { const e = document.activeElement;"
                    " return e.id || e.getAttribute('href') || e.textContent.trim(); }"
                )
            )
        assert reached[0] == "#main", reached  # the skip link
        assert reached[1:6] == ["/", "/", "/data", "/jobs", "/fleet"], reached
        assert "file-input" in reached, reached
        watched.check()
    finally:
        context.close()
