"""`loracle keys create/list/revoke`: the key file holds digests only, and a running API that
reads it (no LORACLE_API_KEY_HASHES) takes a new key and drops a revoked one at once."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from api.security import digest
from cli.main import app
from loracle.settings import get_settings
from tests.cli.conftest import flat
from tests.utils.service import Service

runner = CliRunner()


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LORACLE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LORACLE_API_KEY_HASHES", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def keys(*args: str) -> Result:
    return runner.invoke(app, ["keys", *args])


def created_key(result: Result) -> str:
    assert result.exit_code == 0, result.output
    found = re.search(r"export LORACLE_API_KEY=(\S+)", result.output)
    assert found, result.output
    return found.group(1)


def test_create_prints_the_key_once_framed_and_keeps_its_digest_only(data_dir: Path):
    r = keys("create")
    key = created_key(r)
    assert "Your API key, shown once" in r.output and "╭" in r.output and "╰" in r.output
    text = (data_dir / "api-key.sha256").read_text()
    assert key not in text
    assert re.search(rf"^default:{digest(key)} \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", text, re.M)
    assert (data_dir / "api-key.sha256").stat().st_mode & 0o077 == 0  # the owner's alone

    r = keys("create", "--owner", "alice", "--json")
    made = json.loads(r.stdout)
    assert made["owner"] == "alice" and made["digest"] == digest(made["key"])
    assert made["key"] not in (data_dir / "api-key.sha256").read_text()

    r = keys("create", "--owner", "not a name")
    assert r.exit_code == 2 and "--owner" in r.output


def test_list_shows_owner_digest_prefix_and_time_and_revoke_by_owner_or_prefix(data_dir: Path):
    first = created_key(keys("create"))
    second = created_key(keys("create", "--owner", "alice"))
    third = created_key(keys("create", "--owner", "alice"))
    out = flat(keys("list").output)
    for key, owner in ((first, "default"), (second, "alice"), (third, "alice")):
        assert re.search(rf"{owner} │ {digest(key)[:12]} │ \d{{4}}-", out), out
        assert digest(key) not in out  # a prefix, not the digest
    listed = json.loads(keys("list", "--json").stdout)
    assert [(e["owner"], e["digest"]) for e in listed] == [
        ("default", digest(first)),
        ("alice", digest(second)),
        ("alice", digest(third)),
    ]
    assert all(e["created_at"] for e in listed)

    r = keys("revoke", digest(second)[:10])
    assert r.exit_code == 0 and f"revoked alice {digest(second)[:12]}" in r.output
    r = keys("revoke", "alice")
    assert r.exit_code == 0 and digest(third)[:12] in r.output
    assert [e["owner"] for e in json.loads(keys("list", "--json").stdout)] == ["default"]
    r = keys("revoke", "alice")
    assert r.exit_code == 1 and "no key of owner or digest 'alice'" in flat(r.output)
    r = keys("revoke", digest(first)[:4])
    assert r.exit_code == 1 and "8+ hex digits" in flat(r.output)
    r = keys("revoke", "default")
    assert r.exit_code == 0 and "no keys are left" in flat(r.output)


def test_a_running_api_reads_the_key_file_without_a_restart(
    tmp_path: Path, model_root: Path, data_dir: Path
):
    service = Service.create(data_dir, model_root)
    service.env.pop("LORACLE_API_KEY_HASHES")
    # A file as the first run wrote it before keys had owners: a bare digest still counts.
    old = "lor_written_before_owners"
    (data_dir / "api-key.sha256").write_text(digest(old) + "\n")
    service.start_api()
    try:

        def status(key: str) -> int:
            headers = {"Authorization": f"Bearer {key}"}
            return httpx.get(f"{service.url}/v1/jobs", headers=headers, timeout=10).status_code

        assert status(old) == 200
        key = created_key(keys("create", "--owner", "bob"))
        assert status(key) == 200  # no restart
        assert keys("revoke", "bob").exit_code == 0
        assert status(key) == 401
        assert status(old) == 200
    finally:
        service.stop()


def test_keys_warns_when_the_environment_list_wins(data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LORACLE_API_KEY_HASHES", digest("lor_other"))
    get_settings.cache_clear()
    r = keys("create")
    assert r.exit_code == 0 and "LORACLE_API_KEY_HASHES is set here" in flat(r.output)


def test_keys_worker_prints_a_token_and_its_digest_and_writes_no_api_key(data_dir: Path):
    result = keys("worker", "--json")
    assert result.exit_code == 0, result.output
    made = json.loads(result.output)
    assert made["token"].startswith("lorw_") and digest(made["token"]) == made["digest"]
    assert not (data_dir / "api-key.sha256").exists(), "a worker token is not an API key"
    shown = keys("worker")
    token = re.search(r"LORACLE_WORKER_TOKEN=(\S+)", shown.output)
    assert token, shown.output
    assert digest(token.group(1)) in shown.output.splitlines()  # a line of its own, whole
