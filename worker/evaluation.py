"""The comparison at the end of a run: the base model against the adapter, on the validation set.

`compare(model, tokenizer, validation_file, seq_len, batch_size)` measures the same quantities
twice, once with the adapter disabled (peft's `disable_adapter()`: the base model's own
weights, exactly) and once with it, and returns a `Comparison`:

- `loss`: the mean cross-entropy per trained token over the whole validation file, tokenized
  and truncated as the run trains (`worker.data.tokenize_file`, same `seq_len`). Every trained
  token counts once, so the figure does not depend on the batch size; the Trainer's
  `eval_loss` averages per-batch means instead, and is the same figure when every batch holds
  as many trained tokens. `perplexity` is `exp(loss)`.
- `exact_match` (prompt/completion files only; null for `text` and `messages`): on the first
  `MAX_MATCH_ROWS` rows whose prompt fits `seq_len` and whose reference fits
  `MAX_NEW_TOKENS`, the share of rows where greedy decoding of the prompt reproduces the
  completion exactly, compared as token ids: the reference is the completion's ids as the run
  trains on them (the completion tokenized on its own, as `worker.data.tokenize_row` does),
  without the eos the run appends; the generated ids are the new tokens up to, not including,
  the first eos (or pad) token, and nothing else is stripped. A row matches when the two id
  lists are equal; a generation that stops at `MAX_NEW_TOKENS` without an eos matches only
  if the reference is exactly that long. Rows left out are counted in `skipped`.

Its cost is bounded: two forward passes over the validation file (no gradient), and at most
`MAX_MATCH_ROWS` x `MAX_NEW_TOKENS` decoding steps per model. Its memory is about what the
Trainer's own evaluation takes: the loss is computed `batch_size` rows at a time (the run's
micro batch, as the Trainer evaluates), and greedy decoding takes up to `GENERATION_BATCH`
rows at a time (left-padded) only while rows x (longest prompt + `MAX_NEW_TOKENS`) stays
within `batch_size` x `seq_len` tokens, one row at a time otherwise. It runs after the run's
memory peak was measured, so it is not part of that peak. On the tiny test model it takes
well under a second.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from loracle.jsonl import read_rows
from worker.data import IGNORE_INDEX, PadCollator, tokenize_file, tokenize_row

MAX_MATCH_ROWS = 64
"""Prompt/completion rows whose greedy completion is compared (the first ones of the file)."""
MAX_NEW_TOKENS = 64
"""Tokens generated per row at most; longer references are skipped."""
GENERATION_BATCH = 16
"""Rows decoded together at most (left-padded); fewer when they hold more tokens than the
token budget (see the module's docstring)."""
LOSS_BATCH = 8
"""Rows per forward pass for the loss, unless the caller says (a run: its micro batch)."""

MULTI_RANK_SKIP = (
    "the base-vs-adapter comparison is skipped on runs over several ranks: it would need the "
    "gathered model on one rank"
)


class ExactMatch(BaseModel):
    """Greedy completions against the reference completions."""

    matched: int = Field(description="Rows whose greedy completion equals the reference.")
    rows: int = Field(description="Rows compared.")
    skipped: int = Field(
        description="Prompt/completion rows among the first compared ones left out: prompt "
        "longer than seq_len, or reference longer than the new-token cap."
    )
    rate: float | None = Field(description="matched / rows; null when no row was compared.")


class ModelScores(BaseModel):
    """One model's figures on the validation set."""

    loss: float = Field(description="Mean cross-entropy per trained token (nats).")
    perplexity: float | None = Field(description="exp(loss); null where it overflows.")
    exact_match: ExactMatch | None = Field(
        description="Prompt/completion files only; null for other formats."
    )


class Comparison(BaseModel):
    """The base model and the adapter on the same validation rows; `delta` is adapter minus
    base (negative loss deltas are improvements)."""

    validation_rows: int = Field(description="Validation rows scored for the loss.")
    tokens: int = Field(description="Trained tokens the loss is averaged over.")
    format: str
    base: ModelScores
    adapter: ModelScores
    delta: dict[str, float | None] = Field(
        description="adapter - base: loss, perplexity, exact_match (rate, 0-1)."
    )
    max_match_rows: int = MAX_MATCH_ROWS
    max_new_tokens: int = MAX_NEW_TOKENS


def _device(model: Any) -> Any:
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Dropout off and no gradients; the model's training flag as it was afterwards."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def token_loss(
    model: Any,
    examples: list[dict[str, list[int]]],
    pad_token_id: int,
    batch_size: int = LOSS_BATCH,
) -> tuple[float, int]:
    """(mean cross-entropy per trained token, trained tokens) of `examples`, which carry
    labels as `worker.data` makes them (IGNORE_INDEX where no loss applies)."""
    import torch.nn.functional as F

    collate = PadCollator(pad_token_id)
    device = _device(model)
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        rows = examples[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(rows).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        losses = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total += float(losses)
        count += int((labels != IGNORE_INDEX).sum())
    if count == 0:
        raise ValueError("the validation file has no trained token within seq_len")
    return total / count, count


def match_rows(
    path: str | Path, tokenizer: Any, seq_len: int
) -> tuple[list[tuple[list[int], list[int]]], int] | None:
    """The (prompt ids, reference ids) of the first `MAX_MATCH_ROWS` prompt/completion rows
    that fit, and how many of those rows were skipped; None for other formats."""
    info, rows = read_rows(path)
    if info.format != "prompt_completion":
        return None
    eos = tokenizer.eos_token_id
    pairs: list[tuple[list[int], list[int]]] = []
    skipped = 0
    for row in rows[:MAX_MATCH_ROWS]:
        full = tokenize_row(row, info.format, tokenizer, None)
        cut = next(i for i, label in enumerate(full["labels"]) if label != IGNORE_INDEX)
        prompt, reference = full["input_ids"][:cut], full["input_ids"][cut:]
        if eos is not None and reference and reference[-1] == eos:
            reference = reference[:-1]
        if len(prompt) > seq_len or len(reference) > MAX_NEW_TOKENS:
            skipped += 1
            continue
        pairs.append((prompt, reference))
    return pairs, skipped


def completion_ids(new_tokens: list[int], stop_ids: set[int]) -> list[int]:
    """The generated ids up to, not including, the first stop token (eos or pad)."""
    for i, token in enumerate(new_tokens):
        if token in stop_ids:
            return new_tokens[:i]
    return new_tokens


def generation_batches(
    prompts: list[list[int]], token_budget: int | None = None
) -> Iterator[list[list[int]]]:
    """The prompts in order, in batches of at most `GENERATION_BATCH` rows whose rows x
    (longest prompt + `MAX_NEW_TOKENS`) stays within `token_budget` (None: no budget); a
    row alone is a batch whatever its length."""
    chunk: list[list[int]] = []
    for prompt in prompts:
        longest = max([len(prompt), *(len(p) for p in chunk)]) + MAX_NEW_TOKENS
        full = len(chunk) == GENERATION_BATCH
        if chunk and (
            full or (token_budget is not None and (len(chunk) + 1) * longest > token_budget)
        ):
            yield chunk
            chunk = []
        chunk.append(prompt)
    if chunk:
        yield chunk


def greedy_completions(
    model: Any, tokenizer: Any, prompts: list[list[int]], token_budget: int | None = None
) -> list[list[int]]:
    """Greedy decoding of each prompt (at most `MAX_NEW_TOKENS` new tokens), cut at the first
    eos or pad token (`completion_ids`), in `generation_batches`."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    device = _device(model)
    out: list[list[int]] = []
    for chunk in generation_batches(prompts, token_budget):
        width = max(len(p) for p in chunk)
        # Left padding: every row's next token is at the same position.
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            num_beams=1,
            max_new_tokens=MAX_NEW_TOKENS,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
            # Greedy: no sampling knobs, whatever the model's generation_config says.
            temperature=None,
            top_p=None,
            top_k=None,
        )
        out += [completion_ids(row[width:].tolist(), stop) for row in generated]
    return out


def exact_match(
    model: Any,
    tokenizer: Any,
    pairs: list[tuple[list[int], list[int]]],
    skipped: int,
    token_budget: int | None = None,
) -> ExactMatch:
    """`ExactMatch` of the model's greedy completions against the references."""
    prompts = [p for p, _ in pairs]
    generated = greedy_completions(model, tokenizer, prompts, token_budget) if pairs else []
    matched = sum(g == ref for g, (_, ref) in zip(generated, pairs, strict=True))
    return ExactMatch(
        matched=matched,
        rows=len(pairs),
        skipped=skipped,
        rate=matched / len(pairs) if pairs else None,
    )


def score(
    model: Any, tokenizer: Any, examples, pairs, skipped: int, batch_size: int, token_budget: int
) -> ModelScores:
    """One model's `ModelScores` (the model as it is called: with or without its adapter)."""
    with _eval_mode(model):
        loss, _ = token_loss(model, examples, tokenizer.pad_token_id, batch_size)
        match = (
            exact_match(model, tokenizer, pairs, skipped, token_budget)
            if pairs is not None
            else None
        )
    return ModelScores(loss=loss, perplexity=_perplexity(loss), exact_match=match)


def _perplexity(loss: float) -> float | None:
    return math.exp(loss) if loss < 700 else None  # exp overflows a float past ~709


def compare(
    model: Any,
    tokenizer: Any,
    validation_file: str | Path,
    seq_len: int,
    batch_size: int = LOSS_BATCH,
) -> Comparison:
    """Score the base (adapter disabled) and the adapter on the validation file, `batch_size`
    rows at a time (and greedy decoding within `batch_size` x `seq_len` tokens a batch).

    `model` is a peft model; its adapter is re-enabled afterwards, even on an error."""
    data = tokenize_file(validation_file, tokenizer, seq_len)
    found = match_rows(validation_file, tokenizer, seq_len)
    pairs, skipped = found if found is not None else (None, 0)
    budget = (batch_size, batch_size * seq_len)
    with model.disable_adapter():
        base = score(model, tokenizer, data.examples, pairs, skipped, *budget)
    adapter = score(model, tokenizer, data.examples, pairs, skipped, *budget)
    # The loss's denominator: labels predicted from a previous position (the first never is).
    tokens = sum(1 for e in data.examples for label in e["labels"][1:] if label != IGNORE_INDEX)
    rates = (
        (base.exact_match.rate, adapter.exact_match.rate)
        if base.exact_match and adapter.exact_match
        else (None, None)
    )
    return Comparison(
        validation_rows=len(data.examples),
        tokens=tokens,
        format=data.format,
        base=base,
        adapter=adapter,
        delta={
            "loss": adapter.loss - base.loss,
            "perplexity": adapter.perplexity - base.perplexity
            if adapter.perplexity is not None and base.perplexity is not None
            else None,
            "exact_match": rates[1] - rates[0]
            if rates[0] is not None and rates[1] is not None
            else None,
        },
    )


def describe(comparison: dict[str, Any]) -> str:
    """The `evaluation` event's message: what was found, skipped, or what failed."""
    if comparison.get("error"):
        return (
            f"evaluation of the base against the adapter failed ({comparison['error']}); "
            "the adapter was trained and saved all the same"
        )
    if comparison.get("skipped"):
        return f"evaluation skipped: {comparison['skipped']}"
    base, adapter = comparison["base"], comparison["adapter"]

    def figure(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    line = (
        f"validation: base loss {figure(base['loss'], 4)} (perplexity "
        f"{figure(base['perplexity'], 2)}), adapter {figure(adapter['loss'], 4)} "
        f"({figure(adapter['perplexity'], 2)})"
    )
    b, a = base.get("exact_match"), adapter.get("exact_match")
    if b and a and a["rows"]:
        line += f"; exact match {b['matched']}/{b['rows']} -> {a['matched']}/{a['rows']}"
    return line


def base_loss(comparison: dict[str, Any] | None) -> float | None:
    """The base model's validation loss of a comparison, when it has one (loss.png's line)."""
    base = (comparison or {}).get("base")
    return base.get("loss") if isinstance(base, dict) else None


def evaluate_run(
    model: Any,
    tokenizer: Any,
    validation_file: str | Path,
    seq_len: int,
    world_size: int,
    batch_size: int = LOSS_BATCH,
) -> dict[str, Any]:
    """The `comparison` of metrics.json, never raising for a failed comparison: a run that
    trained fine keeps its adapter whatever happens here. Returns the `Comparison` as JSON,
    or `{"skipped": why}` on several ranks, or `{"error": what}` when it failed (out of
    memory included)."""
    if world_size > 1:
        return {"skipped": MULTI_RANK_SKIP}
    try:
        found = compare(model, tokenizer, validation_file, seq_len, batch_size)
        return _finite(found.model_dump(mode="json"))
    except Exception as exc:  # the training's result stands; the error is recorded instead
        return {"error": f"{type(exc).__name__}: {exc}"}


def _finite(value: Any) -> Any:
    """NaN and infinities as null: the record is strict JSON (PostgreSQL's JSONB refuses them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
