"""`loracle.hub.load_failure`: a worker's failed load of a hub model, as transformers raises
it (its own OSError over huggingface_hub's errors and the connection error under them), read
as the codes the API answers at submission."""

from __future__ import annotations

import httpx2
import pytest
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from loracle import hub

FIXES = ("LORACLE_MODEL_ROOTS", "HF_HOME", "HF_HUB_OFFLINE=1")
SAID = (
    "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them "
    "in the cached files."
)


def transformers_error(cause: BaseException) -> OSError:
    """What transformers raises: its OSError, raised from the hub's error."""
    try:
        try:
            raise cause
        except BaseException as exc:
            raise OSError(SAID) from exc
    except OSError as exc:
        return exc


def no_connection() -> LocalEntryNotFoundError:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as exc:
            raise LocalEntryNotFoundError("cannot find the requested files in the cache") from exc
    except LocalEntryNotFoundError as exc:
        return exc


def http_error(cls: type, status: int) -> BaseException:
    request = httpx2.Request("GET", "https://hub.test/api/models/acme/x")
    return cls("no", response=httpx2.Response(status, request=request))


def test_no_connection_is_hub_unreachable_with_the_fixes_and_the_library_line(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    found = hub.load_failure("acme/x", transformers_error(no_connection()))
    assert found is not None and found.code == hub.HUB_UNREACHABLE
    message = str(found)
    assert "could not be reached to load model 'acme/x'" in message
    assert all(fix in message for fix in FIXES), message
    assert message.endswith(f"[the worker could not load it: {SAID}]")
    assert found.retry_after_s == hub.RETRY_AFTER_S


def test_offline_without_the_model_in_the_cache_is_model_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    missing = LocalEntryNotFoundError("outgoing traffic has been disabled")
    found = hub.load_failure("acme/x", transformers_error(missing))
    assert found is not None and found.code == hub.MODEL_NOT_CACHED
    assert all(fix in str(found) for fix in FIXES), str(found)
    assert str(tmp_path / "hf" / "hub") in str(found)


@pytest.mark.parametrize(
    ("cause", "code"),
    [
        (http_error(RepositoryNotFoundError, 404), hub.MODEL_NOT_FOUND),
        (http_error(GatedRepoError, 403), hub.MODEL_GATED),
    ],
)
def test_the_hubs_answers_keep_their_codes(cause, code):
    found = hub.load_failure("acme/x", transformers_error(cause))
    assert found is not None and found.code == code, found


def test_the_libraries_bare_line_alone_still_reads_as_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    found = hub.load_failure("acme/x", OSError(SAID))
    assert found is not None and found.code == hub.HUB_UNREACHABLE


def test_failures_that_are_not_about_the_hub_are_left_alone():
    assert hub.load_failure("acme/x", MemoryError()) is None
    assert hub.load_failure("acme/x", OSError("No space left on device")) is None
    assert hub.load_failure("acme/x", RuntimeError("CUDA out of memory")) is None
