"""The base-vs-adapter comparison (worker/evaluation.py) on the tiny model, against figures
computed here independently: the loss from the model's own per-row losses, greedy
completions one row at a time without padding, the base from a model that never had an
adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from worker import evaluation
from worker.data import IGNORE_INDEX, tokenize_file


@pytest.fixture(scope="module")
def base(tiny_model: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval()


@pytest.fixture(scope="module")
def adapted(tiny_model: Path):
    """The tiny model with a random, non-zero LoRA adapter (lora_B is not zeros), so that it
    answers differently from its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, config).eval()


def trained_tokens(example: dict[str, list[int]]) -> int:
    return sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)


def test_loss_is_the_mean_per_trained_token(base, tokenizer, data_dir: Path) -> None:
    # Rows of two formats, of different lengths: batches with padding, rows of unequal weight.
    examples = [
        *tokenize_file(data_dir / "messages-validation.jsonl", tokenizer, 64).examples,
        *tokenize_file(data_dir / "prompt_completion-validation.jsonl", tokenizer, 64).examples,
    ]
    assert len({len(e["input_ids"]) for e in examples}) > 1
    assert len(examples) > evaluation.LOSS_BATCH
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:  # the model's own mean loss of each row, unpadded
            out = base(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]]))
            total += float(out.loss) * trained_tokens(e)
            count += trained_tokens(e)
    for batch_size in (1, 3, evaluation.LOSS_BATCH):  # per token: whatever the batches
        with torch.no_grad():
            loss, tokens = evaluation.token_loss(base, examples, tokenizer.pad_token_id, batch_size)
        assert tokens == count
        assert loss == pytest.approx(total / count, rel=1e-5)


def test_match_rows_are_the_prompt_and_the_completion_without_eos(
    tokenizer, tmp_path: Path
) -> None:
    rows = [
        {"prompt": f"continue the sequence from alpha bravo {i}:", "completion": " charlie"}
        for i in range(evaluation.MAX_MATCH_ROWS + 6)
    ]
    rows[3] = {"prompt": "alpha " * 40, "completion": " bravo"}  # longer than seq_len
    rows[4] = {"prompt": "alpha", "completion": " bravo" * (evaluation.MAX_NEW_TOKENS + 1)}
    path = tmp_path / "pc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = evaluation.match_rows(path, tokenizer, seq_len=32)
    assert found is not None
    pairs, skipped = found
    # The first MAX_MATCH_ROWS rows only; of those, the two that do not fit are skipped.
    assert skipped == 2 and len(pairs) == evaluation.MAX_MATCH_ROWS - 2
    prompt, reference = pairs[0]
    assert prompt == tokenizer(rows[0]["prompt"])["input_ids"]  # with bos, as trained
    assert reference == tokenizer(" charlie", add_special_tokens=False)["input_ids"]
    assert tokenizer.eos_token_id not in reference

    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"text": "alpha bravo"}) + "\n")
    assert evaluation.match_rows(text, tokenizer, seq_len=32) is None


def test_completion_ids_stop_at_the_first_stop_token() -> None:
    assert evaluation.completion_ids([7, 8, 1, 9, 1], {1, 5}) == [7, 8]
    assert evaluation.completion_ids([7, 5, 5], {1, 5}) == [7]
    assert evaluation.completion_ids([7, 8], {1}) == [7, 8]  # the cap reached, no eos
    assert evaluation.completion_ids([1, 7], {1}) == []


def test_generation_batches_keep_the_order_within_the_token_budget() -> None:
    new = evaluation.MAX_NEW_TOKENS
    prompts = [[1] * n for n in (10, 10, 30, 10, 100, 5)]
    # Budget for two rows of 10 + new tokens: the 30-token prompt starts a batch of its own.
    batches = list(evaluation.generation_batches(prompts, token_budget=2 * (10 + new)))
    assert [[len(p) for p in b] for b in batches] == [[10, 10], [30], [10], [100], [5]]
    assert [p for b in batches for p in b] == prompts
    many = [[1]] * (evaluation.GENERATION_BATCH + 1)
    assert [len(b) for b in evaluation.generation_batches(many)] == [
        evaluation.GENERATION_BATCH,
        1,
    ]


def _greedy_one_row(model, tokenizer, prompt: list[int]) -> list[int]:
    """Greedy decoding of one prompt alone (no padding, no batch), by hand: argmax each step."""
    ids = list(prompt)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(evaluation.MAX_NEW_TOKENS):
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if token in (tokenizer.eos_token_id, tokenizer.pad_token_id):
                break
            new.append(token)
            ids.append(token)
    return new


def test_exact_match_counts_rows_whose_greedy_completion_is_the_reference(
    adapted, tokenizer
) -> None:
    words = ["alpha", "bravo", "charlie", "delta", "echo"]
    # Prompts of several lengths (left padding in a batch), over two generation batches.
    prompts = [
        tokenizer(" ".join(words[: 1 + i % 5]) + f" {i}")["input_ids"]
        for i in range(evaluation.GENERATION_BATCH + 4)
    ]
    assert len({len(p) for p in prompts}) > 1
    references = [_greedy_one_row(adapted, tokenizer, p) for p in prompts]
    pairs = list(zip(prompts, references, strict=True))
    with evaluation._eval_mode(adapted):
        found = evaluation.exact_match(adapted, tokenizer, pairs, skipped=3)
    assert (found.matched, found.rows, found.skipped, found.rate) == (
        len(pairs),
        len(pairs),
        3,
        1.0,
    )

    # One token more, one token less, one token changed: no longer matches.
    broken = list(pairs)
    for i in (0, 5, 9):
        prompt, reference = broken[i]
        broken[i] = (prompt, [*reference, 7]) if i == 0 else (prompt, reference[:-1])
    prompt, reference = broken[11]
    broken[11] = (prompt, [reference[0] + 1, *reference[1:]] if reference else [3])
    with evaluation._eval_mode(adapted):
        found = evaluation.exact_match(adapted, tokenizer, broken, skipped=0)
    assert found.matched == len(pairs) - 4 and found.rate == pytest.approx(16 / 20)


def test_base_is_the_model_with_its_adapter_disabled(
    adapted, base, tokenizer, data_dir: Path
) -> None:
    path = data_dir / "prompt_completion-validation.jsonl"
    comparison = evaluation.compare(adapted, tokenizer, path, seq_len=32)
    examples = tokenize_file(path, tokenizer, 32).examples
    with torch.no_grad():
        base_loss, tokens = evaluation.token_loss(base, examples, tokenizer.pad_token_id)
        adapter_loss, _ = evaluation.token_loss(adapted, examples, tokenizer.pad_token_id)
    assert comparison.tokens == tokens and comparison.validation_rows == len(examples) == 8
    assert comparison.base.loss == pytest.approx(base_loss, rel=1e-6)
    assert comparison.adapter.loss == pytest.approx(adapter_loss, rel=1e-6)
    assert abs(comparison.adapter.loss - comparison.base.loss) > 0.01  # the adapter is on after
    assert comparison.base.perplexity == pytest.approx(torch.tensor(base_loss).exp().item())
    assert comparison.delta["loss"] == pytest.approx(adapter_loss - base_loss)

    # The base's completions are those of the model that never had an adapter.
    pairs, _ = evaluation.match_rows(path, tokenizer, 32) or ([], 0)
    assert comparison.base.exact_match is not None and comparison.base.exact_match.rows == 8
    base_answers = [(p, _greedy_one_row(base, tokenizer, p)) for p, _ in pairs]
    with evaluation._eval_mode(adapted), adapted.disable_adapter():
        assert evaluation.exact_match(adapted, tokenizer, base_answers, 0).matched == 8
    assert adapted.training is False  # as it was before


def test_text_files_have_no_exact_match(adapted, tokenizer, data_dir: Path) -> None:
    comparison = evaluation.compare(adapted, tokenizer, data_dir / "text-validation.jsonl", 32)
    assert comparison.format == "text"
    assert comparison.base.exact_match is None and comparison.adapter.exact_match is None
    assert comparison.delta["exact_match"] is None
    assert "exact match" not in evaluation.describe(comparison.model_dump(mode="json"))


def test_evaluate_run_records_a_failure_or_a_skip_and_never_raises(
    adapted, tokenizer, tmp_path: Path, data_dir: Path
) -> None:
    found = evaluation.evaluate_run(adapted, tokenizer, tmp_path / "gone.jsonl", 32, 1)
    assert set(found) == {"error"} and "gone.jsonl" in found["error"]
    assert "failed" in evaluation.describe(found) and "saved all the same" in evaluation.describe(
        found
    )
    assert evaluation.base_loss(found) is None

    path = data_dir / "prompt_completion-validation.jsonl"
    skipped = evaluation.evaluate_run(adapted, tokenizer, path, 32, world_size=2)
    assert skipped == {"skipped": evaluation.MULTI_RANK_SKIP}
    assert evaluation.describe(skipped).startswith("evaluation skipped: ")

    done = evaluation.evaluate_run(adapted, tokenizer, path, 32, 1)
    assert evaluation.base_loss(done) == done["base"]["loss"]
    assert json.loads(json.dumps(done, allow_nan=False)) == done  # strict JSON
