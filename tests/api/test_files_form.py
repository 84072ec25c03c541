"""POST /v1/files takes its multipart form as strictly as a JSON body: `file` as a file part
and `purpose` as a text field, each once, and nothing else; each mistake is a 422 naming the
field and the fix, never a silent guess."""

from __future__ import annotations

import pytest

ROW = b'{"text": "a row"}\n'


@pytest.mark.parametrize(
    ("request_parts", "field", "fix"),
    [
        ({"data": {"purpose": "fine-tune", "file": ROW.decode()}}, "file", "not a text field"),
        (
            {"files": {"file": ("a.jsonl", ROW), "purpose": ("p.txt", b"fine-tune")}},
            "purpose",
            "not a file",
        ),
        (
            {"files": {"file": ("a.jsonl", ROW)}, "data": {"purpose": "fine-tune", "mdoel": "x"}},
            "mdoel",
            "not a field of an upload",
        ),
        (
            {
                "files": [("file", ("a.jsonl", ROW)), ("file", ("b.jsonl", ROW))],
                "data": {"purpose": "fine-tune"},
            },
            "file",
            "upload one file per request",
        ),
        (
            {
                "files": [
                    ("file", ("a.jsonl", ROW)),
                    ("purpose", (None, b"fine-tune")),
                    ("purpose", (None, b"fine-tune")),
                ]
            },
            "purpose",
            "give it once",
        ),
        (
            {"files": {"file": ("a.jsonl", ROW)}, "data": {"purpose": "training"}},
            "purpose",
            "fine-tune",
        ),
        ({"data": {"purpose": "fine-tune"}}, "file", "is required"),
    ],
    ids=[
        "file-as-text",
        "purpose-as-file",
        "unknown-field",
        "two-files",
        "two-purposes",
        "wrong-purpose",
        "no-file",
    ],
)
def test_a_wrong_form_is_a_422_naming_the_field_and_the_fix(client, request_parts, field, fix):
    before = client.get("/v1/files").json()["data"]
    r = client.post("/v1/files", **request_parts)
    assert r.status_code == 422, r.text
    (problem,) = r.json()["problems"]
    assert problem["field"] == field and fix in problem["message"], problem
    assert client.get("/v1/files").json()["data"] == before  # nothing was stored


def test_the_right_form_is_stored(client):
    r = client.post("/v1/files", files={"file": ("a.jsonl", ROW)}, data={"purpose": "fine-tune"})
    assert r.status_code == 201, r.text
    assert (r.json()["filename"], r.json()["rows"]) == ("a.jsonl", 1)
