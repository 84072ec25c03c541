"""Checks for every field that names something on the server's disk.

A user never names a server path outside the configured roots. Traversal
(``..``), percent-encoded forms (``%2e%2e%2f``), NUL bytes and symlinks are
refused outright, before any path is resolved or opened, with a 422 that names
the field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from advisor.errors import InvalidInput, Problem

_ENCODED = re.compile(r"%[0-9a-fA-F]{2}")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,254}$")


def _problem(field: str, message: str, value: str) -> InvalidInput:
    return InvalidInput([Problem(field, message, value[:300])])


def refuse_tricks(value: str, field: str) -> None:
    """The patterns no legitimate path or name needs."""
    if "\x00" in value:
        raise _problem(field, "contains a NUL byte; remove it", value)
    if _ENCODED.search(value):
        raise _problem(
            field, "contains a percent-encoded sequence; send the plain characters", value
        )
    if ".." in re.split(r"[\\/]", value):
        raise _problem(field, "contains '..'; name the place itself, without going up", value)


def check_plain_name(value: str, field: str) -> str:
    """A file name without any directory part, e.g. an upload's or an artifact's."""
    refuse_tricks(value, field)
    if "/" in value or "\\" in value or not _PLAIN_NAME.match(value):
        raise _problem(
            field,
            "must be a plain file name (letters, digits, '.', '_', '-', spaces), e.g. train.jsonl",
            value,
        )
    return value


def check_local_path(path: str, field: str, roots: list[Path]) -> None:
    """A local model directory, as `loracle.model_source.locate_model` placed it (an absolute
    path), must lie inside one of ``roots`` with no symlink on the way: stricter than the
    worker's check, which follows links that stay inside a root."""
    given = Path(os.path.normpath(path))
    root = next((r for r in roots if given.is_relative_to(r)), None)
    if root is None:
        raise _problem(
            field,
            f"is outside the allowed roots ({', '.join(str(r) for r in roots)}); move the model "
            "into one of them, or name it relative to the first",
            path,
        )
    here = root
    for part in given.relative_to(root).parts:
        here = here / part
        if here.is_symlink():
            raise _problem(field, f"goes through a symlink ({here}); give the real directory", path)
