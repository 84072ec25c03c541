"""A model's context window and a prompt's length in its tokens, without torch: what the API
checks before a try is queued (POST /v1/fine_tuning/jobs/{id}/try), and what the worker checks
again with the tokenizer it generates with.

The window is the model's config.json's `max_position_embeddings` (or the older names of the
same number); a prompt fits when its tokens plus `max_new_tokens` do. The API counts tokens
with the `tokenizers` library on the model's `tokenizer.json` when both are at hand (a model
in a model root, or a hub model in this host's cache, and the `worker` extra installed); when
they are not, the API cannot count and the worker's check is the one that answers, as a failed
try with the error code `prompt_too_long`.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from loracle.errors import ModelSourceError
from loracle.model_source import is_hub_id, resolve_model_source

# The config keys that hold a model's context window, by the families that use them.
WINDOW_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_window(config: dict[str, Any]) -> int | None:
    """The model's context window in tokens, from its config.json (a multimodal model's
    `text_config` when the top level has none), or None when it names none."""
    for scope in (config, config.get("text_config") or {}):
        for key in WINDOW_KEYS:
            value = scope.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def model_file(model: str, name: str, roots: list[Path]) -> Path | None:
    """`name` (config.json, tokenizer.json) of the model a job names: in its directory inside
    a model root, or in this host's hub cache for a hub id; None when it is not here."""
    try:
        located = resolve_model_source(model, roots)
    except ModelSourceError:
        return None
    if is_hub_id(located):
        from huggingface_hub import try_to_load_from_cache

        from loracle.hub import cache_dir

        found = try_to_load_from_cache(located, name, cache_dir=cache_dir())
        return Path(found) if isinstance(found, str) else None
    path = Path(located) / name
    return path if path.is_file() else None


def window_of(model: str, roots: list[Path]) -> int | None:
    """The context window of the model a job names, or None when its config is not here or
    names none."""
    path = model_file(model, "config.json", roots)
    if path is None:
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return context_window(config) if isinstance(config, dict) else None


def token_counts(model: str, roots: list[Path], prompts: list[str]) -> list[int] | None:
    """Each prompt's length in the model's tokens (special tokens included, as generation
    adds them), or None when this host cannot count: no `tokenizers` library, or no
    tokenizer.json of the model here."""
    path = model_file(model, "tokenizer.json", roots)
    if path is None:
        return None
    try:
        tokenizer = _tokenizer(str(path), os.stat(path).st_mtime_ns)
    except Exception:  # no library, or a file it cannot read: the worker checks instead
        return None
    return [len(encoding.ids) for encoding in tokenizer.encode_batch(prompts)]


@lru_cache(maxsize=8)
def _tokenizer(path: str, mtime_ns: int) -> Any:
    """A tokenizer, kept per file and version (a few MB each; the mtime is in the key so that a
    replaced model is read again)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def too_long(counts: list[int], window: int, max_new_tokens: int) -> list[int]:
    """The indexes of the prompts whose tokens and `max_new_tokens` exceed `window`."""
    return [i for i, n in enumerate(counts) if n + max_new_tokens > window]
