"""POST /v1/jobs with a hub id asks the hub at submission (a stand-in on this machine, through
HF_ENDPOINT): a model it has is accepted; one it lacks is a 422 model_not_found; a hub that
cannot be reached is a 503 hub_unreachable with Retry-After, within the timeout; offline mode
answers from the hub cache under HF_HOME. Never a job that fails 40 s later."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.utils.api import client_for, error_code, settings_for
from tests.utils.builders import write_jsonl
from tests.utils.hub import cache_model, fake_hub, refusing_port

WEIGHTS = ["config.json", "model.safetensors"]
FIXES = ("LORACLE_MODEL_ROOTS", "HF_HOME", "HF_HUB_OFFLINE=1")


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


@pytest.fixture
def api(tmp_path: Path):
    """A client, a training file, and a job body without its model."""
    with client_for(settings_for(tmp_path / "data", hub_timeout_s=1.0)) as client:
        data = write_jsonl(tmp_path / "rows.jsonl", "text", n_rows=4)
        upload = client.post(
            "/v1/files",
            files={"file": (data.name, data.read_bytes())},
            data={"purpose": "fine-tune"},
        )
        assert upload.status_code == 201, upload.text
        body = {"training_file": upload.json()["id"], "variant": "lora"}
        yield client, body


def jobs(client) -> list:
    return client.get("/v1/jobs", params={"limit": 100}).json()["data"]


def test_a_model_the_hub_has_is_accepted(api, monkeypatch):
    client, body = api
    with fake_hub({"acme/tiny": WEIGHTS, "Qwen/Qwen2.5-0.5B": WEIGHTS}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        r = client.post("/v1/jobs", json={**body, "model": "acme/tiny"})
        assert r.status_code == 201, r.text
        assert r.json()["model"] == "acme/tiny"
        # The README's job: a catalog model, with the advisor choosing the variant.
        auto = {
            **body,
            "model": "Qwen/Qwen2.5-0.5B",
            "variant": "auto",
            "profile": {"hardware": {"gpu": "t4"}, "goal": {"priority": "speed"}},
        }
        r = client.post("/v1/jobs", json=auto)
        assert r.status_code == 201, r.text
        assert r.json()["decision"] is not None


def test_a_model_the_hub_lacks_is_a_422_model_not_found_and_no_job(api, monkeypatch):
    client, body = api
    with fake_hub({"acme/tiny": WEIGHTS}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        r = client.post("/v1/jobs", json={**body, "model": "acme/tiyn"})
    assert r.status_code == 422, r.text
    answer = r.json()
    assert error_code(answer) == "model_not_found"
    (problem,) = answer["problems"]
    assert problem["field"] == "model" and problem["value"] == "acme/tiyn"
    assert "LORACLE_MODEL_ROOTS" in problem["message"]
    assert jobs(client) == []


def test_an_unreachable_hub_is_a_503_with_retry_after_within_the_timeout(api, monkeypatch):
    client, body = api
    with refusing_port() as address:
        monkeypatch.setenv("HF_ENDPOINT", address)
        started = time.monotonic()
        r = client.post("/v1/jobs", json={**body, "model": "acme/tiny"})
        took = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert took < 3.0, f"{took:.1f} s with a 1 s timeout"
    assert error_code(r.json()) == "hub_unreachable"
    assert int(r.headers["retry-after"]) > 0
    message = r.json()["problems"][0]["message"]
    assert all(fix in message for fix in FIXES), message
    assert jobs(client) == []


def test_offline_a_cached_model_is_accepted_and_an_uncached_one_says_how(
    api, monkeypatch, tmp_path
):
    client, body = api
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_model(tmp_path / "hf-home", "acme/cached")
    with fake_hub({"acme/cached": WEIGHTS, "acme/uncached": WEIGHTS}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        cached = client.post("/v1/jobs", json={**body, "model": "acme/cached"})
        uncached = client.post("/v1/jobs", json={**body, "model": "acme/uncached"})
        assert [r for r in hub.requests if r.startswith("/api/models/")] == []
    assert cached.status_code == 201, cached.text
    assert uncached.status_code == 422, uncached.text
    assert error_code(uncached.json()) == "model_not_cached"
    message = uncached.json()["problems"][0]["message"]
    assert "HF_HOME" in message and "LORACLE_MODEL_ROOTS" in message


def test_the_hub_is_asked_only_about_an_otherwise_good_hub_id(api, monkeypatch):
    client, body = api
    with fake_hub({"acme/tiny": WEIGHTS}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        bad = {**body, "model": "acme/tiny", "training_file": "file-" + "0" * 24}
        r = client.post("/v1/jobs", json=bad)
        assert r.status_code == 422 and error_code(r.json()) == "invalid_request", r.text
        assert [p["field"] for p in r.json()["problems"]] == ["training_file"]
        assert [q for q in hub.requests if q.startswith("/api/models/")] == []
