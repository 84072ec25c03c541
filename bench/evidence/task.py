"""The downstream task: say what the Python prompt prints for a one-line expression.

    prompt:      >>> isinstance([3, 'mode'], dict)\n
    completion:  False  (then eos)

Six kinds of expression, equally often: `type(x).__name__`, `bool(x)`, `len(x)`,
`isinstance(x, T)`, a comparison of two integers and a sum of two small integers, over random
literals (ints, floats, strings, bytes, lists, tuples, sets, dicts, True/False/None) built from
words of the corpus. Answers are one to three tokens, so nothing is copied from the prompt:
the skill is reading the literal (its brackets, quotes, commas and digits) and knowing what
Python makes of it. That is what a base of this size can learn: at a few million parameters
pretrained for minutes it has no induction heads, so tasks that copy arbitrary text from the
prompt (a dict to JSON, say) stay out of its reach whatever the variant.

Why the base cannot do it yet: it has read doctests, but never this many answers in a row, and
never an answer followed by the end of the text; before fine-tuning it gets no example right
(`exact_match` at step 0). No held-out prompt occurs in the training set; for sums that means
training never adds a held-out sum's operands in that order (it may add them the other way
round: `3 + 4` held out, `4 + 3` trained).

Metrics on the held-out set, over the completion tokens (eos included, as the worker's data
code trains it):

- `eval_loss`: mean cross-entropy per completion token (nats), token-weighted.
- `token_accuracy`: share of completion tokens whose most likely next token, given the true
  prefix (teacher forcing), is the right one.
- `exact_match`: share of examples whose completion tokens are all right. With greedy decoding
  this is exactly "prints the right answer and stops": if every teacher-forced prediction is
  right, greedy decoding reproduces the completion token by token, and if one is wrong, greedy
  decoding departs there. It costs one forward pass instead of a generation loop (ties
  between equal logits aside, which do not occur in practice with fp32 logits).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

_WORD = re.compile(r"\b[a-z]{3,9}\b")
KINDS = ("type", "bool", "len", "isinstance", "compare", "add")
_BUILTINS = {
    f.__name__: f for f in (type, bool, len, set, isinstance, int, str, list, dict, tuple, float)
}
TYPES = ("int", "float", "str", "bytes", "list", "tuple", "set", "dict", "bool", "NoneType")


def word_pool(texts: list[str], size: int = 400) -> list[str]:
    """The `size` most frequent lowercase words of the corpus (ties by spelling)."""
    counts = Counter(w for text in texts for w in _WORD.findall(text))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [w for w, _ in ranked[:size]]


def _scalar(rng: random.Random, words: list[str]) -> Any:
    return rng.choice([rng.randrange(100), rng.choice(words)])


def literal(rng: random.Random, words: list[str], kind: str, size: int | None = None) -> str:
    """Source text of a literal of Python type `kind` (`size` items for containers)."""
    n = rng.randint(0, 4) if size is None else size
    items = [repr(_scalar(rng, words)) for _ in range(n)]
    if kind == "int":
        return str(rng.choice([0, rng.randrange(1000)]))
    if kind == "float":
        return rng.choice(["0.0", f"{rng.randrange(100)}.{rng.randrange(10)}"])
    if kind == "str":
        return repr(rng.choice(["", rng.choice(words)]))
    if kind == "bytes":
        return "b" + repr(rng.choice(["", rng.choice(words)]))
    if kind == "list":
        return "[" + ", ".join(items) + "]"
    if kind == "tuple":
        return "()" if n == 0 else "(" + ", ".join(items) + ("," if n == 1 else "") + ")"
    if kind == "set":
        return "set()" if n == 0 else "{" + ", ".join(dict.fromkeys(items)) + "}"
    if kind == "dict":
        keys = rng.sample(words, n)
        return "{" + ", ".join(f"{k!r}: {_scalar(rng, words)!r}" for k in keys) + "}"
    if kind == "bool":
        return rng.choice(["True", "False"])
    if kind == "NoneType":
        return "None"
    raise ValueError(kind)


def make_example(rng: random.Random, words: list[str]) -> dict[str, str]:
    kind = rng.choice(KINDS)
    if kind == "compare":
        a, b = rng.randrange(100), rng.randrange(100)
        expr = f"{a} {rng.choice(['<', '>', '=='])} {b}"
    elif kind == "add":
        expr = f"{rng.randrange(20)} + {rng.randrange(20)}"
    elif kind == "len":
        container = rng.choice(["list", "tuple", "dict"])
        expr = f"len({literal(rng, words, container, rng.randint(0, 6))})"
    elif kind == "type":
        expr = f"type({literal(rng, words, rng.choice(TYPES))}).__name__"
    elif kind == "bool":
        expr = f"bool({literal(rng, words, rng.choice(TYPES))})"
    else:
        target = rng.choice(["int", "str", "list", "dict", "tuple", "float"])
        expr = f"isinstance({literal(rng, words, rng.choice(TYPES))}, {target})"
    # Only literals and the names of _BUILTINS: our own generated text, no user input.
    value = eval(expr, {"__builtins__": _BUILTINS})
    return {"prompt": f">>> {expr}\n", "completion": repr(value), "kind": kind}


def write_task(
    directory: Path,
    texts: list[str],
    *,
    train_rows: int,
    eval_rows: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Write `train.jsonl` and `eval.jsonl` (prompt/completion rows) into `directory`.

    The same texts and seed write the same files. No held-out prompt occurs in the training
    file. Returns a description for the record.
    """
    words = word_pool(texts)
    # The held-out set first, from its own generator: the same for every size of training set.
    rng = random.Random(seed)
    held: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(held) < eval_rows:
        row = make_example(rng, words)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            held.append(row)
    rng = random.Random(seed + 1)
    train: list[dict[str, str]] = []
    while len(train) < train_rows:
        row = make_example(rng, words)
        if row["prompt"] not in seen:  # repeats within training are fine, eval prompts never
            train.append(row)
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("eval", held)):
        with (directory / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    return {
        "name": "python-prompt-answers",
        "description": "complete `>>> <expression>` with what Python prints: type names, "
        "truth values, lengths, isinstance, integer comparisons and sums",
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "kinds": list(KINDS),
        "examples": held[: len(KINDS)],
        "train_file": str(directory / "train.jsonl"),
        "eval_file": str(directory / "eval.jsonl"),
    }


def majority_by_kind(eval_file: Path | str) -> dict[str, float]:
    """Per kind of expression (and over all rows, `all`), the share of held-out rows whose
    answer is that kind's most common answer: the exact match of a model that learned only how
    often each answer comes."""
    answers: dict[str, Counter[str]] = {}
    with open(eval_file, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                answers.setdefault(row["kind"], Counter())[row["completion"]] += 1
    shares = {
        kind: round(max(c.values()) / sum(c.values()), 4) for kind, c in sorted(answers.items())
    }
    rows = sum(sum(c.values()) for c in answers.values())
    shares["all"] = round(sum(max(c.values()) for c in answers.values()) / rows, 4)
    return shares


class Evaluator:
    """Held-out metrics of a model, from the same tokenization the worker trains on."""

    def __init__(self, eval_file: Path, tokenizer, seq_len: int, batch_size: int = 32) -> None:
        from worker import data

        self.examples = data.tokenize_file(eval_file, tokenizer, seq_len).examples
        with open(eval_file, encoding="utf-8") as fh:
            self.kinds = [json.loads(line).get("kind", "all") for line in fh if line.strip()]
        if len(self.kinds) != len(self.examples):
            raise ValueError(f"{eval_file}: every held-out row must keep a trained token")
        self.collate = data.PadCollator(tokenizer.pad_token_id)
        self.batch_size = batch_size

    def __call__(self, model) -> dict[str, float]:
        import torch

        was_training = model.training
        model.eval()
        # bitsandbytes 0.50 on a CPU with AVX512-BF16: a Linear4bit in eval mode, given an
        # input without grad, repacks its weight in place for its inference kernel and never
        # packs it back, so training after an evaluation computes wrong gradients (measured:
        # cosine 0.25 to the true ones, QLoRA's held-out loss 30% worse). In training mode it
        # computes the same outputs (it has no dropout) and leaves the weight alone.
        for module in model.modules():
            if type(module).__module__.startswith("bitsandbytes"):
                module.training = True
        nll, tokens, correct = 0.0, 0, 0
        exact: list[bool] = []
        try:
            with torch.no_grad():
                for i in range(0, len(self.examples), self.batch_size):
                    batch = self.collate(self.examples[i : i + self.batch_size])
                    logits = model(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                    ).logits.float()
                    labels = batch["labels"][:, 1:]
                    logits = logits[:, :-1]
                    mask = labels != -100
                    losses = torch.nn.functional.cross_entropy(
                        logits.transpose(1, 2), labels.clamp(min=0), reduction="none"
                    )
                    right = (logits.argmax(-1) == labels) & mask
                    nll += float((losses * mask).sum())
                    tokens += int(mask.sum())
                    correct += int(right.sum())
                    exact += (right | ~mask).all(dim=1).tolist()
        finally:
            model.train(was_training)
        return {
            "eval_loss": nll / tokens,
            "token_accuracy": correct / tokens,
            "exact_match": sum(exact) / len(exact),
            "exact_match_by_kind": {
                kind: round(
                    sum(e for e, k in zip(exact, self.kinds, strict=True) if k == kind)
                    / self.kinds.count(kind),
                    4,
                )
                for kind in sorted(set(self.kinds))
            },
        }
