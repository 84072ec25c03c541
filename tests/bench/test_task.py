"""The evidence benchmark's downstream task: a held-out set the training never sees, and
answers that are what Python prints."""

from __future__ import annotations

import json
from pathlib import Path

from bench.evidence.task import _BUILTINS, write_task

TEXTS = [
    "def parse(source, mode='exec'):\n    return compile(source, '<unknown>', mode)\n",
    "class Counter(dict):\n    def most_common(self, n=None):\n        return sorted(self)\n",
]


def _rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_no_held_out_prompt_is_trained_on_and_files_are_reproducible(tmp_path):
    write_task(tmp_path / "a", TEXTS, train_rows=600, eval_rows=120, seed=3)
    train, held = _rows(tmp_path / "a" / "train.jsonl"), _rows(tmp_path / "a" / "eval.jsonl")
    assert (len(train), len(held)) == (600, 120)
    assert len({r["prompt"] for r in held}) == 120, "held-out prompts are distinct"
    assert not {r["prompt"] for r in held} & {r["prompt"] for r in train}
    write_task(tmp_path / "b", TEXTS, train_rows=600, eval_rows=120, seed=3)
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # The held-out set does not depend on how much training data is written.
    write_task(tmp_path / "c", TEXTS, train_rows=50, eval_rows=120, seed=3)
    assert (tmp_path / "c" / "eval.jsonl").read_bytes() == (
        tmp_path / "a" / "eval.jsonl"
    ).read_bytes()


def test_every_answer_is_what_python_prints(tmp_path):
    write_task(tmp_path, TEXTS, train_rows=200, eval_rows=50, seed=0)
    for row in _rows(tmp_path / "train.jsonl") + _rows(tmp_path / "eval.jsonl"):
        expression = row["prompt"].removeprefix(">>> ").rstrip("\n")
        assert row["completion"] == repr(eval(expression, {"__builtins__": _BUILTINS}))
