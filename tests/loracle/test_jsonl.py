"""`loracle.jsonl`: the check every upload and every training file goes through."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loracle.errors import DataFileError
from loracle.jsonl import inspect_jsonl
from tests.utils.builders import jsonl_bytes


@pytest.mark.parametrize("fmt", ["text", "prompt_completion", "messages"])
def test_inspect_accepts_each_format(data_dir, fmt):
    path = data_dir / f"{fmt}.jsonl"
    info = inspect_jsonl(path)
    assert info.format == fmt
    assert info.rows == 64
    assert info.bytes == path.stat().st_size


def test_inspect_reads_bytes_and_chunk_streams_and_skips_blank_lines():
    content = jsonl_bytes({"text": "a"}, "", "   ", {"text": "b"})
    assert inspect_jsonl(content).rows == 2
    chunks = [content[i : i + 3] for i in range(0, len(content), 3)]
    info = inspect_jsonl(iter(chunks))
    assert (info.rows, info.format, info.bytes) == (2, "text", len(content))


def problems_of(content: bytes, **kwargs) -> list[tuple[int, str]]:
    with pytest.raises(DataFileError) as info:
        inspect_jsonl(content, **kwargs)
    return [(p.line, p.message) for p in info.value.problems]


def test_inspect_reports_every_bad_line_with_its_number_and_fix():
    content = jsonl_bytes(
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
        jsonl_bytes(
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
        inspect_jsonl(jsonl_bytes(*["{bad"] * 10), max_errors=3)
    assert [p.line for p in info.value.problems] == [1, 2, 3]
    assert info.value.truncated
    assert "line 2: is not valid JSON" in str(info.value)


def test_inspect_rejects_non_utf8():
    assert "not UTF-8" in problems_of(b'{"text": "\xff"}\n')[0][1]


@pytest.mark.parametrize("module", ["loracle.jsonl", "worker.data"])
def test_data_modules_import_only_the_standard_library(module):
    code = (
        f"import sys; import {module}; "
        "heavy = {'torch', 'transformers', 'peft', 'numpy', 'pydantic'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
@pytest.mark.parametrize(
    ("line", "column"),
    [
        ('{"text": "cut short"', 21),  # the error is at the end of the line
        ('{"text": "a",}', 14),
        ('{"text": "x" "y"}', 14),
    ],
)
def test_a_broken_line_is_reported_at_its_column_from_every_source(tmp_path, line, column, ending):
    content = f'{{"text": "fine"}}\n{line}{ending}'.encode()
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    for source in (path, content, iter([content[:7], content[7:]])):
        with pytest.raises(DataFileError) as info:
            inspect_jsonl(source)
        ((number, message),) = [(p.line, p.message) for p in info.value.problems]
        assert number == 2
        assert f"at column {column})" in message, (source, message)
