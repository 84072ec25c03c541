"""The console's pages as the server sends them (in-process; the browser tests in tests/console
run them): they load without a key, carry their security headers, stay out of the API's
schema, reference only assets that exist and install with the package, and draw their forms
from the request models."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

from advisor.profile import Goal, TrainingSettings
from api.console import endpoints as console
from api.jobs.schemas import Hyperparameters
from tests.utils.api import client_for

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = ROOT / "api" / "console"
PAGES = ["/", "/sign-in", "/data", "/jobs", "/jobs/new", "/jobs/job-0123", "/fleet"]


@pytest.fixture(scope="module")
def anonymous(api_settings):
    with client_for(api_settings, key=None) as c:
        yield c


@pytest.mark.parametrize("path", PAGES)
def test_pages_load_without_a_key_and_forbid_other_origins(anonymous, path):
    r = anonymous.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    # Every asset a page names is this server's, and is there.
    for ref in re.findall(r'(?:src|href)="([^"]+)"', r.text):
        assert not ref.startswith(("http:", "https:", "//")), ref
        if ref.startswith(console.STATIC_URL):
            asset = anonymous.get(ref)
            assert asset.status_code == 200, ref
            assert asset.headers["cache-control"] == "no-cache"


def test_navigation_marks_the_page_it_is_on(anonymous):
    assert re.search(r'href="/jobs" aria-current="page"', anonymous.get("/jobs/job-0123").text)
    assert re.search(r'href="/" aria-current="page"', anonymous.get("/").text)
    sign_in = anonymous.get("/sign-in").text
    assert 'aria-current="page"' not in sign_in and 'id="sign-out"' not in sign_in


def test_a_job_id_in_the_page_path_is_escaped(anonymous):
    r = anonymous.get("/jobs/%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    assert r.status_code == 200
    assert "<img src=x" not in r.text
    assert "&lt;img src=x" in r.text  # the heading
    assert "\\u003cimg src=x" in r.text  # the page's JSON data


def test_the_pages_stay_out_of_the_api_schema(anonymous):
    paths = anonymous.get("/openapi.json").json()["paths"]
    assert all(p.startswith(("/v1/", "/healthz")) for p in paths), sorted(paths)
    assert "/v1/fine_tuning/jobs/{job_id}/events/stream" in paths


def test_a_missing_asset_is_a_404_in_the_error_shape(anonymous):
    r = anonymous.get(f"{console.STATIC_URL}/js/nothing.js")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("path", "prefix", "model"),
    [
        ("/", "training", TrainingSettings),
        ("/", "goal", Goal),
        ("/jobs/new", "hyperparameters", Hyperparameters),
        ("/jobs/new", "profile.goal", Goal),
    ],
)
def test_forms_have_an_input_per_field_of_the_request_model(anonymous, path, prefix, model):
    html = anonymous.get(path).text
    fields = set(re.findall(rf'data-field="{re.escape(prefix)}\.([a-z_]+)"', html))
    assert fields == set(model.model_fields), (fields, set(model.model_fields))
    # Each input has its label: <label for=id>, or the label wraps the checkbox.
    for name in model.model_fields:
        element_id = f"{prefix}.{name}".replace(".", "-")
        assert f'for="{element_id}"' in html or re.search(
            rf'<label class="check"><input type="checkbox" id="{element_id}"', html
        ), element_id


def test_the_advisors_defaults_prefill_the_form(anonymous):
    html = anonymous.get("/").text
    assert re.search(r'id="training-seq_len"[^>]*value="2048"', html.replace("\n", " "))
    assert re.search(r'<option value="adamw" selected>', html)
    assert TrainingSettings().seq_len == 2048


def test_every_console_file_installs_with_the_package():
    """A file under api/console that pyproject's package-data misses would be absent from an
    installed (non-editable) loracle, and its page would 404 on it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["api.console"]
    files = [
        p.relative_to(CONSOLE).as_posix()
        for folder in ("templates", "static")
        for p in (CONSOLE / folder).rglob("*")
        if p.is_file()
    ]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not missing, f"add to [tool.setuptools.package-data] 'api.console': {missing}"


def test_own_assets_name_no_other_origin():
    """Nothing loads from a CDN: the console's own files name no other host (the vendored
    chart library's source mentions its home page in comments, and is loaded as-is)."""
    own = [
        p
        for p in CONSOLE.rglob("*")
        if p.suffix in {".html", ".js", ".css"} and "vendor" not in p.parts
    ]
    assert len(own) > 10
    for path in own:
        for url in re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", path.read_text()):
            raise AssertionError(f"{path.relative_to(ROOT)} names {url}")


def test_the_readmes_screenshots_are_there():
    """The README shows the console: copies of what tests/console/test_flow.py saves as
    tests/console/artifacts/readme-*.png."""
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (ROOT / "README.md").read_text())
    assert {"docs/console-advisor.png", "docs/console-job.png"} <= set(images)
    for image in images:
        assert (ROOT / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
