"""Signing in: a wrong key is told on the sign-in page (never a blank page), no key sends the
reader to sign in and back, and the key lives in this tab's session storage alone."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.console.conftest import Watched, shot, sign_in
from tests.utils.service import Service

pytestmark = pytest.mark.e2e  # a real API and worker, and a real browser


def test_a_wrong_key_shows_a_sign_in_error(browser: Watched, service: Service) -> None:
    page = browser.page
    browser.expect_http(401, "/v1/catalog/gpus")
    sign_in(page, key="lor_not_a_key", next_path="/jobs", wait=False)
    error = page.get_by_role("alert").filter(has_text="refused")
    expect(error).to_contain_text("That key was refused: the API key is not valid")
    expect(page).to_have_url(f"{service.url}/sign-in?next=/jobs")
    expect(page.get_by_label("API key")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("API key")).to_be_focused()
    assert page.evaluate("() => sessionStorage.length") == 0
    shot(page, "sign-in-wrong-key")


def test_an_empty_key_is_told_without_asking_the_server(browser: Watched) -> None:
    page = browser.page
    page.goto("/sign-in")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert").filter(has_text="Enter your API key")).to_be_visible()


def test_no_key_sends_the_reader_to_sign_in_and_back(browser: Watched, service: Service) -> None:
    page = browser.page
    page.goto("/fleet")
    expect(page).to_have_url(f"{service.url}/sign-in?next=%2Ffleet")
    page.get_by_label("API key").fill("lor_test_key_a")
    # Keyboard only: Enter in the field submits the form.
    page.get_by_label("API key").press("Enter")
    expect(page).to_have_url(f"{service.url}/fleet")
    expect(page.get_by_role("heading", level=1)).to_have_text("Fleet")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{service.url}/sign-in?next=%2Ffleet")
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("() => sessionStorage.getItem('loracle.key')") is None


def test_sign_in_never_sends_the_reader_to_another_site(browser: Watched, service: Service) -> None:
    page = browser.page
    for next_path in ("//example.org/x", "https://example.org/x"):
        sign_in(page, next_path=next_path)
        expect(page).to_have_url(f"{service.url}/")


def test_a_key_the_server_stops_accepting_sends_the_reader_to_sign_in(
    browser: Watched, service: Service
) -> None:
    page = browser.page
    sign_in(page, next_path="/jobs")
    expect(page).to_have_url(f"{service.url}/jobs")
    # As if the key had been revoked: the next call is a 401, and the page says why.
    page.evaluate("() => sessionStorage.setItem('loracle.key', 'lor_revoked')")
    browser.expect_http(401, "/v1/jobs")
    page.reload()
    expect(page).to_have_url(
        f"{service.url}/sign-in?next=%2Fjobs&reason=the+API+key+is+not+valid%3B+check+it%2C+or+ask+for+a+new+one"
    )
    expect(page.get_by_role("status").filter(has_text="sign in again")).to_contain_text(
        "the API key is not valid"
    )
