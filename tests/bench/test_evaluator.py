"""The benchmark's held-out evaluation leaves training exactly as it was, QLoRA included."""

from __future__ import annotations

import pytest
import torch

from bench.evidence.task import Evaluator, write_task
from loracle.plan import load_plan
from tests.utils.builders import build_tiny_llama
from worker import modeling

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mode path"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluator")
    model_dir = build_tiny_llama(root / "model")
    task = write_task(root / "task", [WORDS], train_rows=16, eval_rows=24)
    return model_dir, task, root


def _gradients(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("variant", ["lora", "qlora"])
def test_evaluation_does_not_change_the_next_gradients(setup, variant):
    model_dir, task, root = setup
    plan = load_plan(
        {
            "model": str(model_dir),
            "train_file": task["train_file"],
            "output_dir": str(root / variant),
            "variant": variant,
            "lora_dropout": 0.0,
        }
    )
    plan, _ = modeling.resolve_plan(plan, "cpu")
    model, tokenizer = modeling.load_model_and_tokenizer(plan, "cpu")
    with torch.no_grad():  # lora_B starts at zero; give A's gradients something to carry
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    model.train()
    evaluate = Evaluator(task["eval_file"], tokenizer, 64)
    batch = evaluate.collate(evaluate.examples[:8])
    before = _gradients(model, batch)

    metrics = evaluate(model)

    assert model.training
    assert {"eval_loss", "token_accuracy", "exact_match"} <= set(metrics)
    after = _gradients(model, batch)
    for name, grad in before.items():
        torch.testing.assert_close(after[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    packed = [
        m
        for m in model.modules()
        if getattr(getattr(m, "weight", None), "quant_state", None)
        and getattr(m.weight.quant_state, "packing_format_for_cpu", False)
    ]
    assert packed == []
