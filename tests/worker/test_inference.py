"""Trying an adapter (worker.inference): the base and the adapter complete the same prompts with
the same seed and settings. The adapter is trained for real on the tiny model's cycle task, so
after training it continues the cycle where the random base does not."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from loracle.context import token_counts
from loracle.plan import load_plan
from tests.utils.builders import plan_dict
from worker import inference
from worker.inference import PromptTooLong, Stopped, generate_side_by_side
from worker.merge import job_adapter_plan
from worker.training import run_training

PROMPTS = ["alpha bravo charlie", "echo foxtrot"]


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, train_file: Path, tmp_path_factory) -> Path:
    plan = load_plan(
        plan_dict(tiny_model, train_file, tmp_path_factory.mktemp("try-run"), max_steps=30, seed=0)
    )
    result = run_training(plan)
    assert result.status == "succeeded"
    return Path(result.artifacts["adapter_dir"])


def side_by_side(adapter: Path, prompts=PROMPTS, **settings):
    values = {"max_new_tokens": 8, "temperature": 0.0, "seed": 0, **settings}
    return generate_side_by_side(job_adapter_plan(adapter), adapter, prompts, **values)


def test_greedy_is_deterministic_and_the_adapter_learned_the_cycle(adapter: Path):
    first = side_by_side(adapter)
    again = side_by_side(adapter, seed=7)  # greedy draws nothing: the seed changes nothing
    assert [c.model_dump() for c in first.completions] == [
        c.model_dump() for c in again.completions
    ]
    assert first.device == "cpu" and first.base_weights == "original"
    for completion in first.completions:
        assert completion.base != completion.adapter, completion
        assert completion.base_tokens == completion.adapter_tokens == 8 or "" in (
            completion.base,
            completion.adapter,
        )
    # The task: each word of the cycle is followed by the next.
    assert first.completions[0].adapter.split()[:2] == ["delta", "echo"], first.completions[0]
    assert first.completions[1].adapter.split()[:1] == ["golf"], first.completions[1]


def test_a_seed_reproduces_sampled_output(adapter: Path):
    hot = {"temperature": 1.5, "max_new_tokens": 12}
    one = side_by_side(adapter, seed=3, **hot)
    two = side_by_side(adapter, seed=3, **hot)
    other = side_by_side(adapter, seed=4, **hot)
    assert [c.adapter for c in one.completions] == [c.adapter for c in two.completions]
    assert [c.base for c in one.completions] == [c.base for c in two.completions]
    assert [(c.base, c.adapter) for c in one.completions] != [
        (c.base, c.adapter) for c in other.completions
    ]


def test_a_prompt_longer_than_the_context_is_refused_with_the_limit(adapter: Path, tiny_model):
    # The tiny model's context is 512 tokens; each cycle word is at least one token.
    long = " ".join(["alpha"] * 600)
    with pytest.raises(PromptTooLong) as raised:
        side_by_side(adapter, prompts=["alpha", long], max_new_tokens=12)
    assert raised.value.limit == 500
    assert "prompts.1" in str(raised.value) and "at most 500" in str(raised.value)
    # The API's count (the tokenizers library alone) is the worker's.
    from worker.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    prompts = [*PROMPTS, long, "continue the sequence from alpha bravo:"]
    expected = [len(tokenizer(p)["input_ids"]) for p in prompts]
    assert token_counts(str(tiny_model), [tiny_model.parent], prompts) == expected


def test_generation_stops_when_asked_and_past_its_deadline(adapter: Path):
    with pytest.raises(Stopped, match="ran out of time"):
        side_by_side(adapter, deadline=time.monotonic() - 1)
    inference.request_stop()
    try:
        with pytest.raises(Stopped, match="shutting down"):
            side_by_side(adapter)
    finally:
        inference._stop.clear()


def test_a_qlora_adapter_is_tried_on_its_4bit_base(tiny_model: Path, train_file: Path, tmp_path):
    plan = load_plan(
        plan_dict(tiny_model, train_file, tmp_path, max_steps=4, variant="qlora", precision="fp32")
    )
    adapter = Path(run_training(plan).artifacts["adapter_dir"])
    from worker.modeling import load_for_inference

    base = load_for_inference(job_adapter_plan(adapter), "cpu")
    assert "Linear4bit" in {type(m).__name__ for m in base.modules()}, "loaded as it trained"
    result = side_by_side(adapter, prompts=["alpha"])
    assert result.base_weights == "nf4"
    assert len(result.completions) == 1 and result.completions[0].adapter_tokens > 0
