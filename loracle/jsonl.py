"""Training data files: check JSONL uploads row by row, without torch or transformers.

The API checks every upload with `inspect_jsonl` before it answers, and the worker reads the
rows it tokenizes with `read_rows` (tokenization itself is `worker.data`). Standard library
only.

Accepted row formats (one per file; blank lines are skipped; extra keys are ignored):

- `{"text": str}`: plain text, loss on every token.
- `{"prompt": str, "completion": str}`: loss on the completion only.
- `{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}`: a chat;
  loss on the assistant turns only. Needs at least one assistant turn.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loracle.errors import DataFileError, DataProblem

FORMATS = ("text", "prompt_completion", "messages")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class DataFileInfo:
    """What `inspect_jsonl` found: `rows` (non-blank lines), `format` (one of `FORMATS`) and
    `bytes` (size of the file as read)."""

    rows: int
    format: str
    bytes: int


# ---------------------------------------------------------------------------------------------
# Checking files
# ---------------------------------------------------------------------------------------------

Source = str | Path | bytes | bytearray | Iterable[bytes]


def _lines(source: Source, counter: list[int]) -> Iterator[bytes]:
    """Yield the raw lines of a path, a bytes object or an iterator of byte chunks.

    `counter[0]` accumulates the bytes read, so callers learn the size of a stream.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as fh:
            for line in fh:
                counter[0] += len(line)
                yield line
        return
    if isinstance(source, (bytes, bytearray)):
        counter[0] += len(source)
        yield from bytes(source).splitlines()
        return
    pending = b""
    for chunk in source:
        counter[0] += len(chunk)
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from complete
    if pending:
        yield pending


def _row_format(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """Return (format, None) for a well-formed row, else (format or None, what is wrong)."""
    found = []
    if "text" in obj:
        found.append("text")
    if "prompt" in obj or "completion" in obj:
        found.append("prompt_completion")
    if "messages" in obj:
        found.append("messages")
    if not found:
        return None, (
            f"has keys {sorted(obj)} but none of 'text', 'prompt'+'completion' or 'messages'; "
            "give each row one of these"
        )
    if len(found) > 1:
        return None, f"mixes the keys of formats {found}; keep the keys of one format per row"
    fmt = found[0]
    if fmt == "text":
        text = obj["text"]
        if not isinstance(text, str):
            return fmt, f"'text' is a {type(text).__name__}; make it a string"
        if not text.strip():
            return fmt, "'text' is empty; remove the row or give it text"
        return fmt, None
    if fmt == "prompt_completion":
        for key, other in (("prompt", "completion"), ("completion", "prompt")):
            if key not in obj:
                return fmt, f"has {other!r} but no {key!r}; add {key!r} (a string)"
        for key in ("prompt", "completion"):
            if not isinstance(obj[key], str):
                return fmt, f"{key!r} is a {type(obj[key]).__name__}; make it a string"
        if not obj["completion"].strip():
            return fmt, "'completion' is empty; there is nothing to learn, give it text"
        return fmt, None
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        return fmt, "'messages' must be a non-empty list of {'role': ..., 'content': ...}"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return fmt, f"messages[{i}] is a {type(message).__name__}; make it an object"
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return fmt, f"messages[{i}].role is {role!r}; use one of {list(ROLES)}"
        if not isinstance(content, str):
            return fmt, (f"messages[{i}].content is a {type(content).__name__}; make it a string")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        return fmt, "has no non-empty assistant message; add the assistant's answer to train on"
    return fmt, None


def _scan(source: Source, max_errors: int, keep: bool) -> tuple[DataFileInfo, list[dict]]:
    problems: list[DataProblem] = []
    truncated = False

    def report(lineno: int, message: str) -> None:
        nonlocal truncated
        if len(problems) < max_errors:
            problems.append(DataProblem(lineno, message))
        else:
            truncated = True

    rows: list[dict] = []
    counter = [0]
    file_format: str | None = None
    first_line = 0
    n_rows = 0
    for lineno, raw in enumerate(_lines(source, counter), start=1):
        if not raw.strip():
            continue
        n_rows += 1
        try:
            # Without its line ending: json counts a newline as the start of a line 2, and
            # an error at the end of the line would be reported at "column 1".
            obj = json.loads(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError:
            report(lineno, "is not UTF-8 text; save the file as UTF-8")
            continue
        except json.JSONDecodeError as exc:
            report(
                lineno,
                f"is not valid JSON ({exc.msg} at column {exc.colno}); "
                "write one JSON object per line",
            )
            continue
        if not isinstance(obj, dict):
            report(
                lineno, f"is a JSON {type(obj).__name__}, not an object; write one object per line"
            )
            continue
        fmt, problem = _row_format(obj)
        if fmt is not None and file_format is None:
            file_format, first_line = fmt, lineno
        elif fmt is not None and fmt != file_format:
            mixed = (
                f"is format {fmt!r} but line {first_line} is {file_format!r}; "
                "use one format for the whole file"
            )
            problem = f"{mixed}; also, it {problem}" if problem else mixed
        if problem:
            report(lineno, problem)
        elif keep and not problems:
            rows.append(obj)
    if n_rows == 0:
        report(0, "the file has no rows; add at least one JSON line")
    if problems:
        raise DataFileError(problems, truncated=truncated)
    assert file_format is not None
    return DataFileInfo(rows=n_rows, format=file_format, bytes=counter[0]), rows


def inspect_jsonl(source: Source, max_errors: int = 20) -> DataFileInfo:
    """Check a JSONL data file and say what it holds.

    `source` is a path, the file's bytes, or an iterator of byte chunks (an upload stream).
    Raises `DataFileError` with up to `max_errors` problems, each naming its 1-based line,
    what is wrong and how to fix it (bad JSON, missing keys, wrong types, empty text, mixed
    formats, an empty file).
    """
    info, _ = _scan(source, max_errors, keep=False)
    return info


def read_rows(source: Source, max_errors: int = 20) -> tuple[DataFileInfo, list[dict]]:
    """`inspect_jsonl`, keeping the parsed rows (blank lines skipped) for tokenization."""
    return _scan(source, max_errors, keep=True)
