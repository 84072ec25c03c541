"""`loracle.hub.check_hub_model` against a stand-in hub on this machine: a known model
passes, an unknown one is model_not_found, a hub that refuses or never answers is
hub_unreachable within the timeout, and offline mode answers from the hub cache alone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from loracle import hub
from tests.utils.hub import cache_model, fake_hub, refusing_port, silent_port

WEIGHTS = ["config.json", "model.safetensors", "tokenizer.json"]


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Online, with an empty hub cache of the test's own, whatever the machine has set."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def check(repo_id: str, timeout: float = 5.0) -> hub.HubError | None:
    try:
        hub.check_hub_model(repo_id, timeout)
    except hub.HubError as exc:
        return exc
    return None


def test_a_model_the_hub_has_passes(monkeypatch):
    with fake_hub({"acme/tiny": WEIGHTS}) as stand_in:
        monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
        assert check("acme/tiny") is None
        asked = [r.split("?")[0] for r in stand_in.requests if r.startswith("/api/models/")]
        assert asked == ["/api/models/acme/tiny"]


def test_a_model_the_hub_does_not_have_is_model_not_found(monkeypatch):
    with fake_hub({"acme/tiny": WEIGHTS}) as stand_in:
        monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
        error = check("acme/tiyn")
    assert error is not None and error.code == hub.MODEL_NOT_FOUND
    assert error.retry_after_s is None
    assert "acme/tiyn" in str(error) and "LORACLE_MODEL_ROOTS" in str(error)


def test_gated_weightless_and_failing_hubs_say_which(monkeypatch):
    with fake_hub({"acme/pickled": ["config.json", "pytorch_model.bin"]}) as stand_in:
        stand_in.gated.add("acme/gated")
        stand_in.broken.add("acme/broken")
        monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
        gated, pickled, broken = check("acme/gated"), check("acme/pickled"), check("acme/broken")
    assert gated is not None and gated.code == hub.MODEL_GATED and "HF_TOKEN" in str(gated)
    assert pickled is not None and pickled.code == hub.MODEL_NOT_USABLE
    assert ".safetensors" in str(pickled)
    assert broken is not None and broken.code == hub.HUB_UNREACHABLE
    assert "HTTP 500" in str(broken) and broken.retry_after_s


@pytest.mark.parametrize("port", [refusing_port, silent_port], ids=["refused", "no-answer"])
def test_a_hub_that_cannot_be_reached_is_unreachable_within_the_timeout(monkeypatch, port):
    with port() as address:
        monkeypatch.setenv("HF_ENDPOINT", address)
        started = time.monotonic()
        error = check("acme/tiny", timeout=1.0)
        took = time.monotonic() - started
    assert error is not None and error.code == hub.HUB_UNREACHABLE
    assert took < 3.0, f"took {took:.1f} s with a 1 s timeout"
    assert error.retry_after_s == hub.RETRY_AFTER_S
    for name in ("LORACLE_MODEL_ROOTS", "HF_HOME", "HF_HUB_OFFLINE=1"):
        assert name in str(error)


def test_offline_a_cached_model_passes_without_asking_the_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_model(tmp_path / "hf-home", "acme/cached")
    with fake_hub({"acme/cached": WEIGHTS, "acme/elsewhere": WEIGHTS}) as stand_in:
        monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
        assert check("acme/cached") is None
        error = check("acme/elsewhere")  # on the hub, but not in the cache
        assert stand_in.requests == []
    assert error is not None and error.code == hub.MODEL_NOT_CACHED
    assert str(tmp_path / "hf-home" / "hub") in str(error)
    assert "hf download acme/elsewhere" in str(error) and "LORACLE_MODEL_ROOTS" in str(error)


def test_the_cache_follows_hf_hub_cache_and_transformers_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere" / "hub"))
    cache_model(tmp_path / "elsewhere", "acme/cached")
    assert hub.offline() and hub.cache_dir() == str(tmp_path / "elsewhere" / "hub")
    assert check("acme/cached") is None
