"""POST /v1/jobs with a local model whose config.json the API cannot use: a 422 that
names the model, never a 500 (the API reads the config to estimate memory and, for
variant "auto", to let the advisor choose)."""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import select

from api.deps import get_db
from api.jobs.schemas import Hyperparameters, JobCreate
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
        "llama": json.dumps(LLAMA),
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


# -- strict types: every field of the job body, each wrong JSON type ------------------------

# The wrong forms of each kind of field: a number in quotes, a boolean as a string or a
# number, NaN and Infinity (which Python's JSON parser reads though JSON has neither).
WRONG = {
    "int": ["64", "true", True, 64.5, math.nan, math.inf],
    "float": ["3e-4", "true", True, math.nan, math.inf, -math.inf],
    "bool": ["true", "yes", 1, 0, math.nan],
    "text": [64, True, math.nan, math.inf],
    # OpenAI's knobs: a number or "auto", nothing else.
    "int_or_auto": ["64", "true", True, 64.5, math.nan, math.inf, "automatic"],
    "float_or_auto": ["3e-4", "true", True, math.nan, math.inf, "automatic"],
    "object": [64, True, "{}", math.nan, [1]],
}


def _kind(annotation: Any) -> str | type[BaseModel]:
    """A field's kind for WRONG, or the model whose fields it holds."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is dict:
        return "object"
    literals = [a for a in args if typing.get_origin(a) is typing.Literal]
    for kind in (int, float):
        if kind in args and literals == [typing.Literal["auto"]]:
            return f"{kind.__name__}_or_auto"
    for kind in (bool, int, float):  # bool first: a bool is an int to issubclass
        if annotation is kind:
            return kind.__name__
    return "text"  # strings, literals, lists and unions of them: never a number or a boolean


def _fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple]:
    """(path, kind) of every field of the job body, nested models included: derived from the
    models, so a field added to them is covered here without a change."""
    for name, info in model.model_fields.items():
        kind = _kind(info.annotation)
        if isinstance(kind, str):
            yield (*prefix, name), kind
        else:
            yield from _fields(kind, (*prefix, name))


JOB_FIELDS = list(_fields(JobCreate))


def test_the_field_list_reaches_every_nested_model():
    paths = {".".join(path) for path, _ in JOB_FIELDS}
    assert {
        "model",
        "hyperparameters.learning_rate",
        "hyperparameters.gradient_checkpointing",
        "profile.hardware.gpu_count",
        "profile.goal.lora_quality_gap",
    } <= paths
    assert {f"hyperparameters.{name}" for name in Hyperparameters.model_fields} <= paths


@pytest.fixture(scope="module")
def good_body(setup) -> dict[str, Any]:
    client, models, file_id = setup
    body = {
        "model": str(models / "llama"),
        "training_file": file_id,
        "variant": "lora",
        "hyperparameters": {"max_steps": 1},
        "profile": {"hardware": {"gpu": "t4"}, "goal": {"priority": "speed"}},
        # OpenAI's method, with the knobs under it empty: every nested field has its place.
        "method": {"type": "supervised", "supervised": {"hyperparameters": {}}},
    }
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text  # the body is good: only the wrong field can fail
    return body


@pytest.mark.parametrize(("path", "kind"), JOB_FIELDS, ids=[".".join(p) for p, _ in JOB_FIELDS])
def test_every_job_field_refuses_every_wrong_json_type(setup, good_body, path, kind):
    client = setup[0]
    for wrong in WRONG[kind]:
        body = json.loads(json.dumps(good_body))
        parent = body
        for key in path[:-1]:
            parent = parent.setdefault(key, {})
        parent[path[-1]] = wrong
        # json.dumps writes NaN and Infinity, as a careless client would; httpx refuses to.
        r = client.post(
            "/v1/jobs",
            content=json.dumps(body),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422, (path, wrong, r.text)
        problems = r.json()["problems"]
        named = [p for p in problems if p["field"] == ".".join(path)]
        assert named, (path, wrong, problems)
        assert "got" in named[0]["message"] or "must" in named[0]["message"], named


# -- allow_variant_change: whether an out-of-memory retry may make the job QLoRA -------------


def test_allow_variant_change_is_accepted_stored_and_shown(setup, good_body):
    client = setup[0]
    default = client.post("/v1/jobs", json=good_body)
    assert default.status_code == 201, default.text
    assert default.json()["allow_variant_change"] is False
    r = client.post("/v1/jobs", json={**good_body, "allow_variant_change": True})
    assert r.status_code == 201, r.text
    assert r.json()["allow_variant_change"] is True
    # Read back from the store, and on the OpenAI path too.
    job_id = r.json()["id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["allow_variant_change"] is True
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["allow_variant_change"] is True


@pytest.mark.parametrize("wrong", ["true", "yes", 1, 0, None, [True]])
def test_allow_variant_change_refuses_what_is_not_a_boolean_naming_the_field(
    setup, good_body, wrong
):
    client = setup[0]
    r = client.post("/v1/jobs", json={**good_body, "allow_variant_change": wrong})
    assert r.status_code == 422, r.text
    fields = [p["field"] for p in r.json()["problems"]]
    assert fields == ["allow_variant_change"], r.json()


def test_allow_variant_change_is_documented_in_the_openapi_schema(setup):
    schema = setup[0].get("/openapi.json").json()["components"]["schemas"]
    field = schema["JobCreate"]["properties"]["allow_variant_change"]
    assert field["type"] == "boolean" and field["default"] is False
    assert "QLoRA" in field["description"] and "out_of_memory" in field["description"]
    assert "allow_variant_change" in schema["JobOut"]["properties"]
    assert "out_of_memory" in schema["ErrorInfo"]["properties"]["code"]["description"]


def test_auto_takes_serve_with_from_the_profile_and_records_the_serving_step(setup):
    client, models, file_id = setup
    goal = {"priority": "quality", "lora_quality_gap": True, "serve_with": "vllm"}
    body = {
        "model": str(models / "llama"),
        "training_file": file_id,
        "variant": "auto",
        "profile": {"hardware": {"gpu": "a100-80gb"}, "goal": goal},
    }
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["variant"] == "dora"
    last = job["decision"]["decision_path"][-1]
    assert last["question"] == "Does vLLM load the DoRA adapter as it is?"
    assert last["answer"] == "no" and "merge" in last["evidence"]
    r = client.post("/v1/jobs", json={**body, "profile": {"goal": {"serve_with": "tgi"}}})
    assert r.status_code == 422
    assert "profile.goal.serve_with" in [p["field"] for p in r.json()["problems"]]
