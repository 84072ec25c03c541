"""POST /v1/jobs with a local model whose config.json the API cannot use: a 422 that
names the model, never a 500 (the API reads the config to estimate memory and, for
variant "auto", to let the advisor choose)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.deps import get_db
from api.main import create_app
from loracle.store.db import session
from loracle.store.models import FileRow
from tests.utils.api import KEY_A, client_for, settings_for
from tests.utils.builders import write_jsonl

LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 512,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("jobs-input")
    models = data_dir / "models"
    configs = {
        "not-json": "{ this is not json",
        "a-list": json.dumps([LLAMA]),
        "nan-inside": json.dumps({**LLAMA, "rope_scaling": {"factor": float("nan")}}),
        "no-hidden-size": json.dumps({k: v for k, v in LLAMA.items() if k != "hidden_size"}),
    }
    for name, text in [*configs.items(), ("no-config", None)]:
        (models / name).mkdir(parents=True)
        if text is not None:
            (models / name / "config.json").write_text(text, encoding="utf-8")
        # Weights are looked for before the config is read; an empty safetensors file
        # (an 8-byte header length and an empty header) is enough to get that far.
        (models / name / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")
    with client_for(settings_for(data_dir)) as client:
        rows = write_jsonl(data_dir / "rows.jsonl", "text", n_rows=4)
        upload = client.post(
            "/v1/files",
            files={"file": ("rows.jsonl", rows.read_bytes(), "application/jsonl")},
            data={"purpose": "fine-tune"},
        )
        assert upload.status_code == 201, upload.text
        yield client, models, upload.json()["id"]


@pytest.mark.parametrize("variant", ["auto", "lora"])
@pytest.mark.parametrize("name", ["not-json", "a-list", "no-config", "no-hidden-size"])
def test_an_unusable_config_is_a_422_naming_the_model(setup, name, variant):
    client, models, file_id = setup
    body = {
        "model": str(models / name),
        "training_file": file_id,
        "variant": variant,
        "profile": {"hardware": {"gpu": "t4"}},
    }
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    fields = [p["field"] for p in r.json()["problems"]]
    assert any(f == "model" or f.startswith("model.") for f in fields), r.json()


def test_auto_refuses_a_config_the_advisor_cannot_read_and_a_named_variant_takes_it(setup):
    client, models, file_id = setup
    body = {
        "model": str(models / "nan-inside"),
        "training_file": file_id,
        "profile": {"hardware": {"gpu": "t4"}},
    }
    auto = client.post("/v1/jobs", json={**body, "variant": "auto"})
    assert auto.status_code == 422, auto.text
    assert auto.json()["problems"][0]["field"].startswith("model")
    # A named variant needs no advice: the value is in a key the worker never reads.
    named = client.post("/v1/jobs", json={**body, "variant": "lora"})
    assert named.status_code == 201, named.text


def test_an_apps_own_upload_limit_is_enforced_before_the_body(tmp_path):
    # create_app(settings): the limit is the app's, not the environment's (512 MiB here).
    with client_for(settings_for(tmp_path, max_upload_bytes=1000)) as client:
        big = b'{"text": "' + b"x" * 200_000 + b'"}\n'
        r = client.post(
            "/v1/files",
            files={"file": ("big.jsonl", big, "application/jsonl")},
            data={"purpose": "fine-tune"},
        )
    assert r.status_code == 413
    # The middleware answered from the declared length (and closes the connection):
    # the route, which counts the bytes it reads, words its refusal differently.
    assert r.json()["detail"].startswith("upload larger than the limit of 1000 bytes")
    assert r.headers["connection"] == "close"


def test_what_the_worker_would_refuse_is_a_422_at_submission_and_no_job(setup, tmp_path):
    client, models, file_id = setup
    body = {"model": str(models / "nan-inside"), "training_file": file_id}
    before = client.get("/v1/jobs", params={"limit": 100}).json()["data"]
    r = client.post(
        "/v1/jobs",
        json={
            **body,
            # 'lora' plus DoRA is the variant DoRA: the worker's plan refuses the spelling.
            "variant": "lora",
            "combine_with": ["dora"],
            "hyperparameters": {"target_modules": ["q_proj", ""]},
        },
    )
    assert r.status_code == 422, r.text
    problems = {p["field"]: p["message"] for p in r.json()["problems"]}
    assert "variant='dora'" in problems["combine_with"]
    assert "not module names" in problems["hyperparameters.target_modules"]
    duplicate = client.post(
        "/v1/jobs",
        json={**body, "variant": "qlora", "hyperparameters": {"target_modules": ["q", "q"]}},
    )
    assert duplicate.status_code == 422, duplicate.text
    assert duplicate.json()["problems"][0]["field"] == "hyperparameters.target_modules"
    assert client.get("/v1/jobs", params={"limit": 100}).json()["data"] == before
    # The same request spelled as the worker wants it is accepted.
    fixed = client.post(
        "/v1/jobs",
        json={**body, "variant": "dora", "hyperparameters": {"target_modules": ["q_proj"]}},
    )
    assert fixed.status_code == 201, fixed.text


def test_an_upload_is_committed_before_its_answer(tmp_path):
    """The route commits the file row itself: the dependency's own commit comes only after
    the response has been sent, and a client that submits a job the moment it has the id
    must find the file."""
    settings = settings_for(tmp_path)
    seen: list[bool] = []

    def db_that_looks_before_its_own_commit():
        for s in get_db(settings):
            yield s
            # Where the dependency would commit: is the row visible to others already?
            with session(settings.resolved_database_url) as other:
                seen.append(other.scalar(select(FileRow.id)) is not None)

    app = create_app(settings)
    app.dependency_overrides[get_db] = db_that_looks_before_its_own_commit
    rows = write_jsonl(tmp_path / "rows.jsonl", "text", n_rows=3)
    with TestClient(app, headers={"Authorization": f"Bearer {KEY_A}"}) as client:
        r = client.post(
            "/v1/files",
            files={"file": ("rows.jsonl", rows.read_bytes(), "application/jsonl")},
            data={"purpose": "fine-tune"},
        )
    assert r.status_code == 201, r.text
    assert seen == [True]
