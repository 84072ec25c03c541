"""`loracle files upload` and `list` against a running service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import Loracle, flat
from tests.utils.service import Service

pytestmark = pytest.mark.e2e


def test_upload_prints_the_id_and_json_is_the_apis_answer(
    loracle: Loracle, cli_service: Service, datasets: dict[str, Path]
):
    r = loracle("files", "upload", str(datasets["messages"]))
    assert r.exit_code == 0, r.output
    out = flat(r.output)
    assert "messages.jsonl: 64 rows of messages" in out
    file_id = out.split()[0]
    with cli_service.client() as api:
        stored = api.get(f"/v1/files/{file_id}").json()
    assert stored["rows"] == 64 and stored["format"] == "messages"
    # the same bytes under the same name: the same file, not a second copy
    again = loracle("files", "upload", str(datasets["messages"]), "--json")
    assert json.loads(again.stdout)["id"] == file_id

    r = loracle("files", "upload", str(datasets["text"]), "--json")
    assert r.exit_code == 0, r.output
    answer = json.loads(r.stdout)
    with cli_service.client() as api:
        assert answer == api.get(f"/v1/files/{answer['id']}").json()
        listed = api.get("/v1/files").json()
    r = loracle("files", "list", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == listed
    out = flat(loracle("files", "list").output)
    assert file_id in out and answer["id"] in out


def test_a_bad_file_is_refused_by_line_under_the_argument(loracle: Loracle, tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n{"prompt": "p"}\n')
    r = loracle("files", "upload", str(bad))
    out = flat(r.output)
    assert r.exit_code == 2, out
    # each problem under the argument that named the file, with its line
    assert "error PATH: line 2" in out and "error PATH: line 3" in out, out
    r = loracle("files", "upload", str(tmp_path / "missing.jsonl"))
    assert r.exit_code == 2 and "is not a file" in flat(r.output)
