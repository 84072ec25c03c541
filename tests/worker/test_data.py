from __future__ import annotations

import pytest

from loracle.errors import DataFileError
from tests.utils.builders import jsonl_bytes, make_rows
from worker.data import (
    IGNORE_INDEX,
    PadCollator,
    token_length_stats,
    tokenize_file,
    tokenize_row,
)

# ---- tokenization -----------------------------------------------------------------------------


def trained_text(tok, example) -> str:
    pairs = zip(example["input_ids"], example["labels"], strict=True)
    ids = [i for i, label in pairs if label != IGNORE_INDEX]
    return tok.decode(ids)


def test_text_trains_on_every_token(tokenizer):
    example = tokenize_row({"text": "alpha bravo charlie"}, "text", tokenizer, None)
    assert example["labels"] == example["input_ids"]
    assert example["input_ids"][0] == tokenizer.bos_token_id
    assert example["input_ids"][-1] == tokenizer.eos_token_id
    assert example["attention_mask"] == [1] * len(example["input_ids"])


def test_prompt_completion_masks_the_prompt(tokenizer):
    row = {"prompt": "continue the sequence from alpha:", "completion": " bravo charlie"}
    example = tokenize_row(row, "prompt_completion", tokenizer, None)
    prompt_ids = tokenizer(row["prompt"])["input_ids"]
    completion_ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert example["input_ids"] == [*prompt_ids, *completion_ids, tokenizer.eos_token_id]
    assert example["labels"][:n] == [IGNORE_INDEX] * n
    assert example["labels"][n:] == [*completion_ids, tokenizer.eos_token_id]


MESSAGES = [
    {"role": "system", "content": "you are a helpful model."},
    {"role": "user", "content": "alpha bravo"},
    {"role": "assistant", "content": "charlie delta"},
    {"role": "user", "content": "echo"},
    {"role": "assistant", "content": "foxtrot golf"},
]


def test_messages_with_chat_template_train_only_on_assistant_turns(tokenizer):
    example = tokenize_row({"messages": MESSAGES}, "messages", tokenizer, None)
    whole = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    # The template's rendering, tokenized piecewise, decodes back to itself.
    assert tokenizer.decode(example["input_ids"]) == whole
    assert trained_text(tokenizer, example) == ("charlie delta<|im_end|>\nfoxtrot golf<|im_end|>\n")
    # Everything before the first assistant answer, headers included, is masked.
    head = tokenizer.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    n_head = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    assert example["labels"][:n_head] == [IGNORE_INDEX] * n_head
    assert example["labels"][n_head] != IGNORE_INDEX


def test_messages_without_chat_template_use_the_plain_template(tiny_model_plain):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_plain)
    assert not tok.chat_template
    example = tokenize_row({"messages": MESSAGES}, "messages", tok, None)
    assert tok.decode(example["input_ids"]) == (
        "<s><|system|>\nyou are a helpful model.\n<|user|>\nalpha bravo\n"
        "<|assistant|>\ncharlie delta</s>\n<|user|>\necho\n<|assistant|>\nfoxtrot golf</s>\n"
    )
    assert trained_text(tok, example) == "charlie delta</s>foxtrot golf</s>"


def test_truncation_and_rows_without_trained_tokens(tmp_path, tokenizer):
    long_prompt = " ".join(["alpha"] * 40)
    path = tmp_path / "pc.jsonl"
    path.write_bytes(
        jsonl_bytes(
            {"prompt": long_prompt, "completion": " bravo"},  # completion cut off: dropped
            {"prompt": "alpha", "completion": " " + " ".join(["bravo"] * 40)},  # truncated
            {"prompt": "alpha", "completion": " bravo"},
        )
    )
    data = tokenize_file(path, tokenizer, seq_len=16)
    assert (data.rows, data.dropped, data.truncated) == (3, 1, 2)
    assert len(data.examples) == 2
    assert all(len(e["input_ids"]) <= 16 for e in data.examples)
    with pytest.raises(DataFileError, match="raise seq_len"):
        tokenize_file(path, tokenizer, seq_len=2)


def test_token_length_stats(data_dir, tokenizer):
    stats = token_length_stats(data_dir / "text.jsonl", tokenizer)
    rows = make_rows("text", 64, seed=0)
    lengths = sorted(len(tokenize_row(r, "text", tokenizer, None)["input_ids"]) for r in rows)
    assert stats["min"] == lengths[0] and stats["max"] == lengths[-1]
    assert stats["min"] <= stats["median"] <= stats["max"]


def test_collator_pads_right_and_masks_padding():
    collate = PadCollator(pad_token_id=7)
    batch = collate(
        [
            {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": [-100, 2, 3]},
            {"input_ids": [4], "attention_mask": [1], "labels": [4]},
        ]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
