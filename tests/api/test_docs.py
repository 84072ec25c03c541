"""/docs and /redoc work offline: their pages load Swagger UI and ReDoc from the service
itself, and the OpenAPI declares the bearer scheme, so Swagger UI's Authorize sends the key."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from api.main import create_app

# Every URL a page can load: src, href and ReDoc's spec-url attributes, and Swagger UI's
# `url: '...'`.
REFERENCE = re.compile(
    r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl:\s*["']([^"']+)["']"""
)


@pytest.fixture(scope="module")
def anonymous(api_settings):
    """No key: the documentation is public, as /healthz is."""
    with TestClient(create_app(api_settings)) as c:
        yield c


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_assets_the_service_serves(anonymous, page):
    r = anonymous.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    urls = [a or b for a, b in REFERENCE.findall(html)]
    assert len(urls) >= 3, urls  # a script, the favicon and the schema at least
    assert "://" not in html.replace("window.location.origin", ""), "an absolute URL"
    assert "fonts.googleapis" not in html
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = anonymous.get(url)
        assert asset.status_code == 200, (url, asset.status_code)
        assert len(asset.content) > 100, url
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts and all(u.startswith("/docs-assets/") for u in scripts)


def test_swagger_ui_sends_nothing_to_the_online_validator(anonymous):
    assert '"validatorUrl": null' in anonymous.get("/docs").text


def test_the_openapi_declares_the_bearer_scheme_on_every_protected_operation(anonymous):
    schema = anonymous.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearer"]["description"],
    }
    protected = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                assert operation.get("security") == [{"bearer": []}], (method, path)
                protected += 1
            else:
                assert "security" not in operation, (method, path)
    assert protected >= 14
    # What the scheme declares is what the routes check: every one of them refuses no key.
    for path, operations in schema["paths"].items():
        if path.startswith("/v1/") and "{" not in path and "get" in operations:
            assert anonymous.get(path).status_code == 401, path
