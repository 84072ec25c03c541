"""LORACLE_MODEL_ROOTS holds several colon-separated roots: a model in any of them is
accepted, at submission (the API) and at load (the worker); one outside all is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from api.security import digest
from loracle.settings import Settings
from tests.utils.api import KEY_A, client_for
from tests.utils.builders import write_jsonl
from worker.errors import ModelSourceError
from worker.modeling import resolve_model_source


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


def test_the_api_accepts_either_root_and_refuses_outside(
    settings: Settings, roots: dict[str, Path], tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "text.jsonl", "text", n_rows=8, seed=0)
    with client_for(settings) as c:
        r = c.post(
            "/v1/files",
            files={"file": (data.name, data.read_bytes())},
            data={"purpose": "fine-tune"},
        )
        assert r.status_code == 201, r.text
        file_id = r.json()["id"]
        body = {"training_file": file_id, "variant": "lora", "hyperparameters": {"max_steps": 1}}
        for name in ("first", "second"):
            r = c.post("/v1/jobs", json={**body, "model": str(roots[name])})
            assert r.status_code == 201, (name, r.text)
            assert r.json()["model"] == str(roots[name])
        r = c.post("/v1/jobs", json={**body, "model": str(roots["outside"])})
        assert r.status_code == 422, r.text
        (problem,) = r.json()["problems"]
        assert problem["field"] == "model" and "outside the allowed roots" in problem["message"]
