"""loracle.context: the model's context window from its config, and prompts counted in its
tokens on the API's host, without torch."""

from __future__ import annotations

import json
from pathlib import Path

from loracle.context import context_window, token_counts, too_long, window_of


def test_the_window_is_read_under_each_name_and_in_a_text_config():
    assert context_window({"max_position_embeddings": 4096}) == 4096
    assert context_window({"n_positions": 1024}) == 1024
    assert context_window({"text_config": {"max_position_embeddings": 8192}}) == 8192
    assert context_window({"max_position_embeddings": True}) is None
    assert context_window({}) is None


def test_window_and_counts_of_a_model_in_a_root(tiny_model: Path, tmp_path: Path):
    roots = [tiny_model.parent]
    assert window_of(str(tiny_model), roots) == 512
    assert window_of("tiny-llama", roots) == 512  # relative to the first root
    counts = token_counts(str(tiny_model), roots, ["alpha", "alpha " * 600])
    assert counts is not None and counts[0] < 5 < 600 <= counts[1]
    assert too_long(counts, 512, 12) == [1]
    # Outside every root, or not there at all: nothing to read, so no check here.
    assert window_of(str(tiny_model), [tmp_path]) is None
    assert token_counts("org/not-cached", roots, ["alpha"]) is None
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps(["not", "a", "config"]))
    (broken / "model.safetensors").write_bytes(b"")
    assert window_of(str(broken), [tmp_path]) is None
