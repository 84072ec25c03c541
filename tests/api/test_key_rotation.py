"""Named API keys: several keys may share an owner, which is how a key is rotated without
orphaning what it created. In process, against the real app and store."""

from __future__ import annotations

import pytest

from api.security import configuration_problem, digest
from tests.utils.api import KEY_A, KEY_B, client_for, settings_for
from tests.utils.builders import write_jsonl

KEY_NEW = "lor_the_replacement_of_key_a"


def _upload(client, path) -> str:
    r = client.post(
        "/v1/files",
        files={"file": ("rows.jsonl", path.read_bytes(), "application/jsonl")},
        data={"purpose": "fine-tune"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_a_rotated_key_keeps_its_owners_files(tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", "text", n_rows=3)
    data = tmp_path / "data"
    before = settings_for(data, api_key_hashes=f"{digest(KEY_A)},{digest(KEY_B)}")
    with client_for(before, KEY_A) as a:
        file_id = _upload(a, rows)
    # Step 1 of a rotation: the new key is listed under the old key's owner (its digest).
    during = settings_for(
        data,
        api_key_hashes=f"{digest(KEY_A)},{digest(KEY_A)}:{digest(KEY_NEW)},{digest(KEY_B)}",
    )
    with client_for(during, KEY_NEW) as new, client_for(during, KEY_A) as old:
        assert new.get(f"/v1/files/{file_id}").status_code == 200
        assert old.get(f"/v1/files/{file_id}").status_code == 200
        made_by_new = _upload(new, rows)
        assert old.get(f"/v1/files/{made_by_new}").status_code == 200
    # Step 2: the old key is gone; what it created stays with its owner.
    after = settings_for(data, api_key_hashes=f"{digest(KEY_A)}:{digest(KEY_NEW)},{digest(KEY_B)}")
    with client_for(after, KEY_NEW) as new, client_for(after, KEY_A) as old:
        assert {f["id"] for f in new.get("/v1/files").json()["data"]} >= {file_id, made_by_new}
        assert old.get(f"/v1/files/{file_id}").status_code == 401
    with client_for(after, KEY_B) as other:
        assert other.get(f"/v1/files/{file_id}").status_code == 404


def test_a_named_owner_is_shared_by_its_keys_and_by_no_one_else(tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", "text", n_rows=3)
    settings = settings_for(
        tmp_path / "data",
        api_key_hashes=f"team-a:{digest(KEY_A)},team-a:{digest(KEY_NEW)},team-b:{digest(KEY_B)}",
    )
    with client_for(settings, KEY_A) as a, client_for(settings, KEY_NEW) as a2:
        file_id = _upload(a, rows)
        assert a2.get(f"/v1/files/{file_id}").status_code == 200
    with client_for(settings, KEY_B) as b:
        assert b.get(f"/v1/files/{file_id}").status_code == 404


@pytest.mark.parametrize(
    ("hashes", "says"),
    [
        (f"bad name:{digest(KEY_A)}", "owner names ['bad name']"),
        (f"{'x' * 65}:{digest(KEY_A)}", "owner names"),
        (f"team:{digest(KEY_A)},{digest(KEY_A)}", "lists a digest twice"),
        ("team:not-a-digest", "not SHA-256 hex digests"),
    ],
)
def test_malformed_entries_are_refused_at_start(tmp_path, hashes, says):
    problem = configuration_problem(settings_for(tmp_path, api_key_hashes=hashes))
    assert problem is not None and says in problem


def test_an_owner_named_by_a_digest_is_that_digests_owner_whatever_its_case(tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", "text", n_rows=3)
    data = tmp_path / "data"
    with client_for(settings_for(data, api_key_hashes=digest(KEY_A).upper()), KEY_A) as a:
        file_id = _upload(a, rows)
    rotated = f"{digest(KEY_A).upper()}:{digest(KEY_NEW)}"
    with client_for(settings_for(data, api_key_hashes=rotated), KEY_NEW) as new:
        assert new.get(f"/v1/files/{file_id}").status_code == 200
