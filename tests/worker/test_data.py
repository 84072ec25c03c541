from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.utils.builders import make_rows
from worker.data import (
    IGNORE_INDEX,
    PadCollator,
    inspect_jsonl,
    token_length_stats,
    tokenize_file,
    tokenize_row,
)
from worker.errors import DataFileError


def jsonl(*rows) -> bytes:
    return b"".join((r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in rows)


# ---- checking files ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "prompt_completion", "messages"])
def test_inspect_accepts_each_format(data_dir, fmt):
    path = data_dir / f"{fmt}.jsonl"
    info = inspect_jsonl(path)
    assert info.format == fmt
    assert info.rows == 64
    assert info.bytes == path.stat().st_size


def test_inspect_reads_bytes_and_chunk_streams_and_skips_blank_lines():
    content = jsonl({"text": "a"}, "", "   ", {"text": "b"})
    assert inspect_jsonl(content).rows == 2
    chunks = [content[i : i + 3] for i in range(0, len(content), 3)]
    info = inspect_jsonl(iter(chunks))
    assert (info.rows, info.format, info.bytes) == (2, "text", len(content))


def problems_of(content: bytes, **kwargs) -> list[tuple[int, str]]:
    with pytest.raises(DataFileError) as info:
        inspect_jsonl(content, **kwargs)
    return [(p.line, p.message) for p in info.value.problems]


def test_inspect_reports_every_bad_line_with_its_number_and_fix():
    content = jsonl(
        {"text": "fine"},  # 1
        "{not json",  # 2
        "",  # 3 (blank, skipped)
        {"prompt": "p"},  # 4
        {"text": 3},  # 5
        {"text": "   "},  # 6
        {"messages": [{"role": "user", "content": "hi"}]},  # 7
        [1, 2],  # 8
        {"body": "x"},  # 9
        {"prompt": "p", "completion": "c", "text": "t"},  # 10
    )
    problems = problems_of(content)
    assert [line for line, _ in problems] == [2, 4, 5, 6, 7, 8, 9, 10]
    text = dict(problems)
    assert "not valid JSON" in text[2] and "one JSON object per line" in text[2]
    assert "is format 'prompt_completion' but line 1 is 'text'" in text[4]
    assert "no 'completion'" in text[4] and "add 'completion'" in text[4]
    assert "'text' is a int; make it a string" in text[5]
    assert "'text' is empty" in text[6]
    assert "line 1 is 'text'" in text[7] and "one format" in text[7]
    assert "not an object" in text[8]
    assert "none of 'text', 'prompt'+'completion' or 'messages'" in text[9]
    assert "mixes the keys" in text[10]


def test_inspect_checks_messages():
    problems = problems_of(
        jsonl(
            {"messages": [{"role": "bot", "content": "x"}]},
            {"messages": [{"role": "user", "content": 5}]},
            {"messages": [{"role": "user", "content": "only a question"}]},
            {"messages": []},
        )
    )
    assert [line for line, _ in problems] == [1, 2, 3, 4]
    assert "messages[0].role is 'bot'" in problems[0][1]
    assert "messages[0].content is a int" in problems[1][1]
    assert "no non-empty assistant message" in problems[2][1]
    assert "non-empty list" in problems[3][1]


def test_inspect_empty_file_and_error_cap():
    assert problems_of(b"") == [(0, "the file has no rows; add at least one JSON line")]
    with pytest.raises(DataFileError) as info:
        inspect_jsonl(jsonl(*["{bad"] * 10), max_errors=3)
    assert [p.line for p in info.value.problems] == [1, 2, 3]
    assert info.value.truncated
    assert "line 2: is not valid JSON" in str(info.value)


def test_inspect_rejects_non_utf8():
    assert "not UTF-8" in problems_of(b'{"text": "\xff"}\n')[0][1]


def test_data_module_imports_only_the_standard_library():
    code = (
        "import sys; import worker.data; "
        "heavy = {'torch', 'transformers', 'peft', 'numpy', 'pydantic'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


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
        jsonl(
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
