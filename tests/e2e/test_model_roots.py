"""LORACLE_MODEL_ROOTS holds several colon-separated roots: a model in any of them is
accepted, at submission (the API) and at load (the worker); one outside all is refused."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.security import digest
from loracle.errors import ModelSourceError
from loracle.model_source import resolve_model_source
from loracle.settings import Settings
from tests.utils.api import KEY_A, client_for, settings_for
from tests.utils.builders import write_jsonl


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    """The tiny model copied into two roots, and into a directory outside both whose
    name starts with the first root's (a string-prefix check would let it in)."""
    base = tmp_path_factory.mktemp("roots")
    first, second = base / "models", base / "more-models"
    outside = base / "models-not-allowed"
    models = {}
    for name, folder in (("first", first), ("second", second), ("outside", outside)):
        models[name] = Path(shutil.copytree(tiny_model, folder / "tiny"))
    return {**models, "first_root": first, "second_root": second}


@pytest.fixture
def settings(roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("LORACLE_MODEL_ROOTS", f"{roots['first_root']}:{roots['second_root']}")
    monkeypatch.setenv("LORACLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LORACLE_API_KEY_HASHES", digest(KEY_A))
    monkeypatch.delenv("LORACLE_BROKER_URL", raising=False)
    monkeypatch.delenv("LORACLE_DATABASE_URL", raising=False)
    return Settings()


def test_both_roots_are_read_from_the_colon_separated_variable(
    settings: Settings, roots: dict[str, Path]
) -> None:
    assert settings.allowed_model_roots == [
        roots["first_root"].resolve(),
        roots["second_root"].resolve(),
    ]


def test_the_worker_loads_from_either_root_and_refuses_outside(
    settings: Settings, roots: dict[str, Path]
) -> None:
    allowed = settings.allowed_model_roots
    for name in ("first", "second"):
        assert resolve_model_source(str(roots[name]), allowed) == str(roots[name].resolve())
    with pytest.raises(ModelSourceError, match="outside the allowed model roots"):
        resolve_model_source(str(roots["outside"]), allowed)


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, dict]]:
    """An in-process API on these roots, an uploaded training file, and a job body that
    lacks only its model."""
    data = write_jsonl(tmp_path / "text.jsonl", "text", n_rows=8, seed=0)
    with client_for(settings) as c:
        r = c.post(
            "/v1/files",
            files={"file": (data.name, data.read_bytes())},
            data={"purpose": "fine-tune"},
        )
        assert r.status_code == 201, r.text
        yield c, {"training_file": r.json()["id"], "variant": "lora", "hyperparameters": {}}


def test_the_api_accepts_either_root_and_refuses_outside(
    api: tuple[TestClient, dict], roots: dict[str, Path]
) -> None:
    c, body = api
    for name in ("first", "second"):
        r = c.post("/v1/jobs", json={**body, "model": str(roots[name])})
        assert r.status_code == 201, (name, r.text)
        assert r.json()["model"] == str(roots[name])
    r = c.post("/v1/jobs", json={**body, "model": str(roots["outside"])})
    assert r.status_code == 422, r.text
    (problem,) = r.json()["problems"]
    assert problem["field"] == "model" and "outside the allowed roots" in problem["message"]


def test_a_relative_model_is_found_in_the_first_root_and_stored_resolved(
    api: tuple[TestClient, dict], roots: dict[str, Path]
) -> None:
    c, body = api
    for name in ("tiny", "./tiny"):
        r = c.post("/v1/jobs", json={**body, "model": name})
        assert r.status_code == 201, (name, r.text)
        # The job holds what the worker will load, whatever its working directory.
        assert r.json()["model"] == str(roots["first"].resolve())
    # Relative to the first root only: the second root's copy is reached by its full path.
    (roots["second_root"] / "second-only").mkdir(exist_ok=True)
    r = c.post("/v1/jobs", json={**body, "model": "second-only"})
    assert r.status_code == 422, r.text
    (problem,) = r.json()["problems"]
    assert problem["field"] == "model"
    assert f"first model root ({roots['first_root'].resolve()})" in problem["message"]


def test_an_org_name_directory_in_the_first_root_wins_over_the_hub(
    api: tuple[TestClient, dict], roots: dict[str, Path]
) -> None:
    c, body = api
    local = roots["first_root"] / "acme" / "tiny-llm"
    if not local.exists():
        shutil.copytree(roots["first"], local)
    # The hub is not asked (tests/conftest.py's HF_ENDPOINT refuses: it would be a 503).
    r = c.post("/v1/jobs", json={**body, "model": "acme/tiny-llm"})
    assert r.status_code == 201, r.text
    assert r.json()["model"] == str(local.resolve())


def test_the_model_roots_are_created_at_start(tmp_path: Path) -> None:
    first, second = tmp_path / "new" / "models", tmp_path / "more"
    settings = settings_for(tmp_path / "data", model_roots=f"{first}:{second}")
    assert not first.exists() and not second.exists()
    with client_for(settings) as c:
        assert c.get("/healthz").status_code == 200
    assert first.is_dir() and second.is_dir()
    # The default root, $LORACLE_DATA_DIR/models, too.
    default = settings_for(tmp_path / "other-data")
    with client_for(default):
        pass
    assert (tmp_path / "other-data" / "models").is_dir()
