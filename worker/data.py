"""Training data: turn checked rows into token ids and loss masks, and pad batches.

Rows are read and checked by `loracle.jsonl` (the same check the API runs on uploads). This
module imports only the standard library at module level; tokenization calls methods of the
tokenizer it is handed.

Every trained sequence starts the way the tokenizer starts a plain string (e.g. with bos) and,
for `text` and `prompt`/`completion`, ends with eos (trained), so the model learns to stop.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loracle.errors import DataFileError, DataProblem
from loracle.jsonl import FORMATS, read_rows

IGNORE_INDEX = -100
"""Label value the loss skips (PyTorch's cross-entropy `ignore_index`)."""


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
