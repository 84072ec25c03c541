"""`loracle.model_source`: which models a job may load."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from loracle import model_source
from loracle.errors import ModelSourceError


def test_hub_ids_pass_through(tmp_path):
    assert model_source.resolve_model_source("meta-llama/Llama-3.2-1B", [tmp_path]) == (
        "meta-llama/Llama-3.2-1B"
    )
    # Not hub id syntax: a path relative to the first root, which does not exist there.
    with pytest.raises(ModelSourceError, match="relative to the first model root"):
        model_source.resolve_model_source("not a model", [tmp_path])


def test_local_model_inside_root_is_resolved(tiny_model, model_root):
    assert model_source.resolve_model_source(str(tiny_model), [model_root]) == str(
        tiny_model.resolve()
    )


def test_local_model_outside_roots_is_refused(tiny_model, tmp_path):
    other_root = tmp_path / "allowed"
    other_root.mkdir()
    with pytest.raises(ModelSourceError, match="outside the allowed model roots") as info:
        model_source.resolve_model_source(str(tiny_model), [other_root])
    assert str(other_root) in str(info.value)
    with pytest.raises(ModelSourceError, match="no local model roots"):
        model_source.resolve_model_source(str(tiny_model), [])


def test_a_hub_id_that_is_also_a_directory_here_is_refused(tiny_model, tmp_path, monkeypatch):
    """from_pretrained loads an existing relative directory before asking the hub: a hub id
    the working directory shadows would load a model outside every root."""
    monkeypatch.chdir(tiny_model.parent.parent)
    relative = f"{tiny_model.parent.name}/{tiny_model.name}"
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    with pytest.raises(ModelSourceError, match="also a path in the working directory"):
        model_source.resolve_model_source(relative, [allowed])


# -- the one rule for where a model reference points ---------------------------------------


@pytest.fixture
def two_roots(tiny_model, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(tiny_model, first / "tiny")
    shutil.copytree(tiny_model, first / "team" / "llama" / "v2")
    shutil.copytree(tiny_model, second / "only-here")
    return first, second


@pytest.mark.parametrize("name", ["tiny", "./tiny", "team/llama/v2", "./team/llama/v2"])
def test_a_relative_path_is_relative_to_the_first_root(two_roots, name, monkeypatch, tmp_path):
    first, second = two_roots
    monkeypatch.chdir(tmp_path)  # the working directory plays no part
    expected = str(first / name.removeprefix("./"))
    assert model_source.locate_model(name, [first, second]) == expected
    assert model_source.resolve_model_source(name, [first, second]) == expected


def test_a_relative_path_is_never_looked_up_in_a_later_root(two_roots):
    first, second = two_roots
    assert model_source.locate_model("only-here", [first, second]) == str(first / "only-here")
    with pytest.raises(ModelSourceError, match=re.escape(f"first model root ({first})")):
        model_source.resolve_model_source("only-here", [first, second])
    # Named absolutely, a model in any root is accepted.
    absolute = str(second / "only-here")
    assert model_source.resolve_model_source(absolute, [first, second]) == absolute


def test_org_name_is_the_directory_under_the_first_root_when_there_else_the_hub(tmp_path):
    first = tmp_path / "first"
    (first / "acme" / "local-llm").mkdir(parents=True)
    assert model_source.locate_model("acme/local-llm", [first]) == str(first / "acme/local-llm")
    assert model_source.locate_model("acme/hub-llm", [first]) == "acme/hub-llm"
    assert model_source.resolve_model_source("acme/hub-llm", [first]) == "acme/hub-llm"
    assert model_source.is_hub_id("acme/hub-llm")
    assert not model_source.is_hub_id(str(first / "acme/local-llm"))


def test_absolute_and_home_paths_are_themselves(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert model_source.locate_model("/srv/models/x", [tmp_path]) == "/srv/models/x"
    assert model_source.locate_model("~/models/x", [tmp_path / "r"]) == str(tmp_path / "models/x")
    assert model_source.locate_model("/srv/models/x", []) == "/srv/models/x"


def test_a_relative_path_without_roots_says_what_to_set():
    with pytest.raises(ModelSourceError, match="LORACLE_MODEL_ROOTS"):
        model_source.locate_model("tiny", [])
    assert model_source.locate_model("org/name", []) == "org/name"


def test_symlink_escaping_the_root_is_refused(tiny_model, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "model").symlink_to(tiny_model, target_is_directory=True)
    with pytest.raises(ModelSourceError, match="outside the allowed model roots"):
        model_source.resolve_model_source(str(root / "model"), [root])
    # A model folder inside the root whose weights file links out of it.
    inner = root / "linked-weights"
    inner.mkdir()
    for item in tiny_model.iterdir():
        if item.suffix == ".safetensors":
            (inner / item.name).symlink_to(item)
        else:
            shutil.copy(item, inner / item.name)
    with pytest.raises(ModelSourceError, match="links to"):
        model_source.resolve_model_source(str(inner), [root])


def test_symlink_inside_the_root_is_fine(tiny_model, model_root):
    link = model_root / "alias"
    if not link.exists():
        link.symlink_to(tiny_model, target_is_directory=True)
    assert model_source.resolve_model_source(str(link), [model_root]) == str(tiny_model.resolve())


def test_models_without_safetensors_are_refused(tiny_model, tmp_path):
    root = tmp_path / "root"
    model = root / "pickled"
    shutil.copytree(tiny_model, model)
    for weights in model.glob("*.safetensors"):
        os.rename(weights, weights.with_suffix(".bin"))
    with pytest.raises(ModelSourceError, match=r"no \.safetensors weights"):
        model_source.resolve_model_source(str(model), [root])
    with pytest.raises(ModelSourceError, match="does not exist"):
        model_source.resolve_model_source(str(root / "nothing"), [root])
