"""Session fixtures for the worker tests: one tiny model (with and without a chat template)
and one data file per format, built once, offline, in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.utils.builders import build_tiny_llama, write_jsonl


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The allowed model root; every model the tests build lives under it."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(models_root: Path) -> Path:
    return build_tiny_llama(models_root / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_model_plain(models_root: Path) -> Path:
    """The same model with a tokenizer that has no chat template and no pad token."""
    return build_tiny_llama(models_root / "tiny-llama-plain", chat_template=False, pad_token=False)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("data")
    for fmt in ("text", "prompt_completion", "messages"):
        write_jsonl(directory / f"{fmt}.jsonl", fmt, n_rows=64, seed=0)
        write_jsonl(directory / f"{fmt}-validation.jsonl", fmt, n_rows=8, seed=1)
    return directory


@pytest.fixture(scope="session")
def tokenizer(tiny_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)
