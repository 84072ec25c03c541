"""Training data: check JSONL files, turn rows into token ids and loss masks, pad batches.

This module imports only the standard library at module level: the API imports it to check
uploads without torch or transformers installed. Tokenization imports nothing either; it only
calls methods of the tokenizer it is handed.

Accepted row formats (one per file; blank lines are skipped; extra keys are ignored):

- `{"text": str}`: plain text, loss on every token.
- `{"prompt": str, "completion": str}`: loss on the completion only.
- `{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}`: a chat;
  loss on the assistant turns only. Needs at least one assistant turn.

Every trained sequence starts the way the tokenizer starts a plain string (e.g. with bos) and,
for `text` and `prompt`/`completion`, ends with eos (trained), so the model learns to stop.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import DataFileError, DataProblem

FORMATS = ("text", "prompt_completion", "messages")
ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100
"""Label value the loss skips (PyTorch's cross-entropy `ignore_index`)."""


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
            obj = json.loads(raw.decode("utf-8"))
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


# ---------------------------------------------------------------------------------------------
# Tokenization
# ---------------------------------------------------------------------------------------------

PLAIN_HEADER = "<|{role}|>\n"


def _plain_chat_segments(messages: list[dict], eos_id: int | None) -> list[tuple[Any, bool]]:
    """Segments of a chat for a tokenizer without a chat template, in this plain template::

        <bos><|system|>
        {system content}
        <|user|>
        {user content}
        <|assistant|>
        {assistant content}<eos>
        ...

    that is, per message `<|{role}|>\\n{content}` followed by `\\n`, with the eos token right
    after each assistant's content. Trained: each assistant's content and its eos; the role
    lines and the newlines are not.
    """
    segments: list[tuple[Any, bool]] = []
    for message in messages:
        segments.append((PLAIN_HEADER.format(role=message["role"]), False))
        trained = message["role"] == "assistant"
        segments.append((message["content"], trained))
        if trained and eos_id is not None:
            segments.append(([eos_id], True))
        segments.append(("\n", False))
    return segments


def _template_chat_segments(messages: list[dict], tokenizer) -> list[tuple[Any, bool]]:
    """Segments of a chat rendered by the tokenizer's own chat template.

    The conversation is rendered prefix by prefix: for an assistant turn, the text added by
    `add_generation_prompt=True` (the assistant header) is untrained and the rest of the turn
    (content and end-of-turn marker) is trained. This needs a template where each rendered
    prefix starts the next rendering; templates that rewrite earlier turns are refused.
    """

    def render(prefix: list[dict], generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(
            prefix, tokenize=False, add_generation_prompt=generation_prompt
        )

    segments: list[tuple[Any, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        full = render(messages[: i + 1])
        if message["role"] == "assistant":
            head = render(messages[:i], generation_prompt=True)
            if not head.startswith(done) or not full.startswith(head):
                raise ValueError(
                    "the tokenizer's chat template renders earlier turns differently once later "
                    "turns are added, so assistant tokens cannot be located; use a tokenizer "
                    "whose template only appends, or the prompt/completion format"
                )
            segments += [(head[len(done) :], False), (full[len(head) :], True)]
        else:
            if not full.startswith(done):
                raise ValueError(
                    "the tokenizer's chat template renders earlier turns differently once later "
                    "turns are added; use a tokenizer whose template only appends"
                )
            segments.append((full[len(done) :], False))
        done = full
    return segments


def _segments(row: dict, fmt: str, tokenizer) -> tuple[list[tuple[Any, bool]], bool]:
    """Split a row into (text or token ids, trained) pieces; also say whether the first piece
    gets the tokenizer's special tokens (bos) added."""
    eos_id = tokenizer.eos_token_id
    eos = [([eos_id], True)] if eos_id is not None else []
    if fmt == "text":
        return [(row["text"], True), *eos], True
    if fmt == "prompt_completion":
        return [(row["prompt"], False), (row["completion"], True), *eos], True
    if fmt == "messages":
        if getattr(tokenizer, "chat_template", None):
            # Chat templates write bos themselves when they want it.
            return _template_chat_segments(row["messages"], tokenizer), False
        return _plain_chat_segments(row["messages"], eos_id), True
    raise ValueError(f"format {fmt!r} unknown; use one of {list(FORMATS)}")


def tokenize_row(row: dict, fmt: str, tokenizer, seq_len: int | None) -> dict[str, list[int]]:
    """Token ids, attention mask and labels for one checked row.

    Each piece is tokenized on its own and the ids concatenated, so every completion or
    assistant token is labelled exactly (no token straddles a prompt/answer boundary). Labels
    are the input ids where the loss applies and `IGNORE_INDEX` elsewhere; the model shifts
    them itself. Truncated to `seq_len` tokens (None: no truncation).
    """
    segments, add_special = _segments(row, fmt, tokenizer)
    input_ids: list[int] = []
    labels: list[int] = []
    for i, (piece, trained) in enumerate(segments):
        if isinstance(piece, str):
            if not piece:
                continue
            ids = tokenizer(piece, add_special_tokens=add_special and i == 0)["input_ids"]
        else:
            ids = list(piece)
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
    if seq_len is not None:
        input_ids, labels = input_ids[:seq_len], labels[:seq_len]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


@dataclass
class TokenizedData:
    """A tokenized file: `examples` (dicts of input_ids, attention_mask, labels), the file's
    `format`, `rows` read, `dropped` (rows with no trained token left after truncation, e.g.
    a prompt longer than seq_len) and `truncated` (rows cut to seq_len)."""

    examples: list[dict[str, list[int]]]
    format: str
    rows: int
    dropped: int
    truncated: int


def tokenize_file(path: str | Path, tokenizer, seq_len: int) -> TokenizedData:
    """Check and tokenize a JSONL file. Raises `DataFileError` when the file is bad or when no
    row keeps a trained token within `seq_len`."""
    info, rows = read_rows(path)
    examples, dropped, truncated = [], 0, 0
    for row in rows:
        full = tokenize_row(row, info.format, tokenizer, None)
        if len(full["input_ids"]) > seq_len:
            truncated += 1
        example = {key: value[:seq_len] for key, value in full.items()}
        if all(label == IGNORE_INDEX for label in example["labels"]):
            dropped += 1
            continue
        examples.append(example)
    if not examples:
        raise DataFileError(
            [
                DataProblem(
                    0,
                    f"no row of {str(path)!r} has a trained token within seq_len={seq_len}; "
                    "raise seq_len or shorten the prompts",
                )
            ]
        )
    return TokenizedData(examples, info.format, info.rows, dropped, truncated)


def token_length_stats(path: str | Path, tokenizer) -> dict[str, float]:
    """Token counts of the rows of a JSONL file, untruncated: `{min, median, max}`."""
    info, rows = read_rows(path)
    lengths = [len(tokenize_row(row, info.format, tokenizer, None)["input_ids"]) for row in rows]
    return {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)}


class PadCollator:
    """Pads a list of examples into a batch of tensors, on the right.

    Padding positions get `pad_token_id` in input_ids, 0 in attention_mask and `IGNORE_INDEX`
    in labels, so they neither attend nor count in the loss. Batches are as long as their
    longest example, not seq_len: less padding, less compute.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        return {
            key: torch.tensor(
                [f[key] + [value] * (width - len(f[key])) for f in features], dtype=torch.long
            )
            for key, value in fill.items()
        }
