"""Where a model comes from, checked without torch.

One rule says where a model reference points, the same in the API, the CLI, the worker and the
README (`locate_model`):

- an absolute path, or one starting with `~`, is that directory;
- a hub id (`org/name`) is the directory `org/name` under the first model root when that
  exists, and the Hugging Face hub id otherwise: a model copied into the root wins, so a job
  that names it never reaches the network;
- anything else (`tiny-llama`, `./tiny-llama`, `team/llama/v2`) is relative to the first
  model root (`LORACLE_MODEL_ROOTS`, default `$LORACLE_DATA_DIR/models`), never to the working
  directory of whichever process reads it.

A local directory must then lie, symlinks followed, inside an allowed root, hold safetensors
weights, and not ask for remote code (`auto_map` in config.json). The API checks a job's model
at submission and stores what it resolved; the worker checks that again before it loads it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from loracle.errors import ModelSourceError

# org/name, as the Hub spells repository ids: no leading dot, no "..", exactly one slash.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_hub_id(model: str) -> bool:
    """Whether `model` has the syntax of a hub repository id (`org/name`)."""
    return bool(_HUB_ID.match(model)) and ".." not in model


def is_local(model: str) -> bool:
    """A path, not a hub id, as `from_pretrained` sees it: absolute, `.`/`~`-relative, more
    than one slash, or an existing path (it loads an existing relative directory before asking
    the Hub). The worker's guard for what it loads; `locate_model` is the rule for what a user
    names."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or os.path.exists(model)


def locate_model(model: str, roots: Sequence[Path | str]) -> str:
    """Where `model` points by the one rule (module docstring): the hub id unchanged, or the
    absolute path of a local directory, not yet resolved or checked (`resolve_model_source`
    checks it). The API, the CLI and the worker call this; nothing else joins a model path.

    Raises `ModelSourceError` for a relative path with no root configured, and for a hub id
    that is also a directory in the working directory: `from_pretrained` would load that
    directory, outside every root, instead of the hub's model.
    """
    if model.startswith(("/", "~")):
        return os.path.normpath(os.path.expanduser(model))
    first = Path(os.path.abspath(os.path.expanduser(roots[0]))) if roots else None
    if is_hub_id(model):
        if first is not None and (first / model).is_dir():
            return str(first / model)
        if os.path.exists(model):
            raise ModelSourceError(
                f"model {model!r} is a hub id but also a path in the working directory "
                f"({os.path.abspath(model)}), which transformers would load instead of the "
                "hub's model; move that directory into the first model root"
                + (f" ({first})" if first else "")
            )
        return model
    if first is None:
        raise ModelSourceError(
            f"model {model!r} is a relative path, which is relative to the first model root, "
            "but no model roots are configured; set LORACLE_MODEL_ROOTS or use a hub id"
        )
    return os.path.normpath(first / model)


def resolve_model_source(model: str, allowed_roots: Sequence[Path | str]) -> str:
    """Check a model reference and return what `from_pretrained` should load.

    Where it points is `locate_model`'s rule. A hub id is returned unchanged. A local
    directory is resolved (symlinks followed) and must lie inside one of `allowed_roots`, as
    must every file directly inside it (a weights file symlinked out of the root is refused
    too). It must hold a config.json without `auto_map` (which asks for code shipped with the
    model) and `.safetensors` weights. Returns the resolved directory.

    Raises `ModelSourceError` naming the problem and the fix.
    """
    located = locate_model(model, allowed_roots)
    if is_hub_id(located):
        return located
    roots = [Path(root).expanduser().resolve() for root in allowed_roots]
    if not roots:
        raise ModelSourceError(
            f"model {model!r} is a local path but no local model roots are allowed; set "
            "LORACLE_MODEL_ROOTS or use a hub id"
        )
    try:
        directory = Path(located).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        shown = f" ({located})" if located != model else ""
        raise ModelSourceError(
            f"model path {model!r}{shown} does not exist; a relative path is relative to the "
            f"first model root ({roots[0]}): put the model there or give its absolute path"
        ) from None

    def inside(path: Path) -> bool:
        return any(path.is_relative_to(root) for root in roots)

    where = ", ".join(str(root) for root in roots)
    if not inside(directory):
        raise ModelSourceError(
            f"model path {model!r} resolves to {str(directory)!r}, outside the allowed model "
            f"roots ({where}); move or copy the model into one of them"
        )
    if not directory.is_dir():
        raise ModelSourceError(f"model path {model!r} is not a directory; give the model folder")
    for entry in directory.iterdir():
        if not inside(entry.resolve()):
            raise ModelSourceError(
                f"model file {entry.name!r} in {str(directory)!r} links to "
                f"{str(entry.resolve())!r}, outside the allowed model roots ({where}); "
                "replace the link with the file itself"
            )
    refuse_remote_code(directory)
    if not any(directory.glob("*.safetensors")):
        raise ModelSourceError(
            f"model path {str(directory)!r} holds no .safetensors weights; only safetensors "
            "are loaded (pickle-based .bin files can run code): convert the weights"
        )
    return str(directory)


def refuse_remote_code(directory: Path | str) -> None:
    """Raise `ModelSourceError` when a local model's config.json is missing or asks for remote
    code (`auto_map`): loracle never runs code shipped with a model."""
    config_path = Path(directory) / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelSourceError(
            f"model path {str(directory)!r} has no config.json; give a transformers model folder"
        ) from None
    except json.JSONDecodeError as exc:
        raise ModelSourceError(f"{str(config_path)!r} is not valid JSON ({exc})") from None
    if "auto_map" in config:
        raise ModelSourceError(
            f"model {str(directory)!r} asks for remote code (config.json has auto_map "
            f"{sorted(config['auto_map'])}); loracle never runs code shipped with a model: use "
            "a model whose architecture transformers implements"
        )
