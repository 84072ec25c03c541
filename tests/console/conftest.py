"""Browser tests of the web console: Playwright driving Debian's Chromium (/usr/bin/chromium,
installed by `make test` when missing; never a downloaded browser) against a real API and
worker (tests/utils/service.py) on the embedded broker.

Every page a test opens is watched (`Watched`): a console error, an uncaught exception, a
request that fails, an HTTP error answer, or a request to any other origin fails the test,
unless the test said beforehand that it provokes exactly that answer (`expect_http`).
Screenshots go to tests/console/artifacts/ (git-ignored), or $LORACLE_TEST_ARTIFACTS.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Request,
    Response,
    sync_playwright,
)

from tests.utils.api import KEY_A
from tests.utils.builders import write_jsonl
from tests.utils.service import Service

CHROMIUM = Path("/usr/bin/chromium")
# What the brief for these tests asks of the browser: headless, no sandbox (root in CI), and
# nothing of its own on the network, so every request the test sees is the page's.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def bar_titles() -> list[str]:
    """The advisor page's memory bars, in order: every variant of the registry, then the
    combinations a recommendation can answer (what the console's pages are given)."""
    from advisor.variants import Combination
    from api.console.endpoints import variants

    given = variants()
    singles = [given["titles"][name] for name in given["names"]]
    return singles + [Combination(v, tuple(ideas)).label for v, ideas in given["combinations"]]


BARS = len(bar_titles())
ARTIFACTS = Path(os.environ.get("LORACLE_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def good_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("console-data") / "train.jsonl", "text", 64)


@pytest.fixture(scope="session")
def bad_file(good_file: Path) -> Path:
    """The good file with its third line broken: a row without any of the known keys."""
    lines = good_file.read_text().splitlines()
    lines[2] = '{"txet": "a typo in the key"}'
    bad = good_file.with_name("broken.jsonl")
    bad.write_text("\n".join(lines) + "\n")
    return bad


# Package scope: the service and the browser driver end with the last console test. The
# driver above all: sync Playwright keeps an asyncio loop running on the main thread while it
# lives, and any later test that calls asyncio.run() would fail.
@pytest.fixture(scope="package")
def service(tmp_path_factory: pytest.TempPathFactory, model_root: Path) -> Iterator[Service]:
    """The API and one worker, as `loracle serve` and `loracle worker` run them."""
    svc = Service.create(
        tmp_path_factory.mktemp("console-service"), model_root, LORACLE_STREAM_POLL_S="0.2"
    )
    svc.start_api()
    svc.start_worker()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="package")
def playwright_driver() -> Iterator[Playwright]:
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: `make test` installs Debian's chromium package when it is "
        "missing (or run: apt-get install -y chromium)"
    )
    with sync_playwright() as p:
        yield p


@dataclass
class Watched:
    """A page and everything that went wrong on it."""

    page: Page
    origin: str
    problems: list[str] = field(default_factory=list)
    expected: list[tuple[int, str]] = field(default_factory=list)
    seen: list[tuple[int, str]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path), in order

    def expect_http(self, status: int, path: str) -> None:
        """The test is about to provoke this error answer (once): it is no failure."""
        self.expected.append((status, path))

    def _allowed(self, status: int, url: str) -> bool:
        path = urlsplit(url).path
        for i, (want, want_path) in enumerate(self.expected):
            if want == status and path == want_path:
                self.seen.append(self.expected.pop(i))
                return True
        return False

    def on_response(self, response: Response) -> None:
        status, url = response.status, response.url
        if status >= 400 and not self._allowed(status, url):
            self.problems.append(f"HTTP {status} from {url}")

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        text = message.text
        # Chromium logs every error answer a second time, as a console error; the answer
        # itself is judged in on_response.
        found = re.match(
            r"Failed to load resource: the server responded with a status of (\d+)", text
        )
        if found:
            url = message.location.get("url", "")
            status = int(found.group(1))
            if (status, urlsplit(url).path) in self.seen:
                return
        self.problems.append(f"console error: {text}")

    def on_request(self, request: Request) -> None:
        url = request.url
        if url.startswith(("data:", "blob:", "about:")):
            return
        self.requests.append((request.method, urlsplit(url).path))
        if not url.startswith(self.origin + "/"):
            self.problems.append(f"request to another origin: {url}")

    def on_request_failed(self, request: Request) -> None:
        failure = request.failure or ""
        # Leaving a page aborts what it still had in flight (a poll, the event stream): the
        # browser's doing, not the page's. Every other failure counts.
        if failure == "net::ERR_ABORTED" and request.method == "GET":
            return
        self.problems.append(f"request failed: {request.method} {request.url} ({failure})")

    def check(self) -> None:
        assert not self.problems, "the page reported problems:\n" + "\n".join(self.problems)
        assert not self.expected, f"expected error answers that never came: {self.expected}"


def open_browser(
    driver: Playwright,
    service: Service,
    profile_dir: Path,
    *,
    viewport: dict[str, int] = DESKTOP,
    color_scheme: str = "light",
) -> tuple[BrowserContext, Watched]:
    context = driver.chromium.launch_persistent_context(
        str(profile_dir),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        base_url=service.url,
        viewport=viewport,
        color_scheme=color_scheme,  # type: ignore[arg-type]
        accept_downloads=True,
        is_mobile=viewport == PHONE,
        has_touch=viewport == PHONE,
    )
    context.set_default_timeout(20_000)
    page = context.pages[0] if context.pages else context.new_page()
    watched = Watched(page, service.url)
    page.on("response", watched.on_response)
    page.on("console", watched.on_console)
    page.on("pageerror", lambda error: watched.problems.append(f"uncaught: {error}"))
    page.on("request", watched.on_request)
    page.on("requestfailed", watched.on_request_failed)
    return context, watched


@pytest.fixture
def browser(playwright_driver: Playwright, service: Service, tmp_path: Path) -> Iterator[Watched]:
    """A fresh Chromium profile on a desktop-sized window, watched; checked at the end."""
    context, watched = open_browser(playwright_driver, service, tmp_path / "profile")
    try:
        yield watched
        watched.check()
    finally:
        context.close()


def shot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Page, key: str = KEY_A, next_path: str = "/", *, wait: bool = True) -> None:
    """Sign in on the sign-in page; with `wait`, until the page has left for the next one."""
    page.goto(f"/sign-in?next={next_path}")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    if wait:
        page.wait_for_url(lambda url: "/sign-in" not in url)
