"""Each verdict follows the figures it rests on, and so does the paragraph that states it:
checked with constructed results, once with numbers that support the claim and once with
numbers that do not."""

from __future__ import annotations

import copy

import pytest

from tests.bench.builders import FINALS, memory_figures, paragraph_of, results


def test_dora_within_the_spread_of_seeds_does_not_reproduce_even_with_few_parameters():
    res = results()
    verdict = res["verdicts"]["dora"]
    assert verdict["checks"] == {"quality": "does not reproduce", "parameters": "reproduces"}
    assert verdict["verdict"] == "does not reproduce"
    assert "this run cannot tell DoRA's quality from LoRA's" in paragraph_of(res, "DoRA")


def test_dora_clearly_better_on_every_seed_reproduces():
    finals = copy.deepcopy(FINALS)
    finals[("dora", 2e-3)] = [1.06, 1.08, 1.10]  # 3-4% lower than LoRA on every seed
    res = results(finals)
    assert res["verdicts"]["dora"]["verdict"] == "reproduces"
    paragraph = paragraph_of(res, "DoRA")
    assert "lower by more than the spread" in paragraph
    assert "cannot tell" not in paragraph


def test_qlora_without_a_measured_saving_is_partly_and_says_so():
    res = results()
    verdict = res["verdicts"]["qlora"]
    assert verdict["checks"] == {
        "memory_7b": "reproduces",
        "memory_small": "does not reproduce",
        "quality": "reproduces",
    }
    assert verdict["verdict"] == "partly"
    paragraph = paragraph_of(res, "QLoRA")
    assert "no saving at this scale" in paragraph
    assert "memory the allocator holds on to" in paragraph  # the weights are 5% of the peak
    assert res["advisor_evidence"]["qlora"]["peak_ratio_small"] == pytest.approx(1.008, 1e-3)


def test_qlora_with_a_measured_saving_reproduces():
    res = results(memory=memory_figures(lora_peak=175.0, qlora_peak=100.0))
    assert res["verdicts"]["qlora"]["verdict"] == "reproduces"
    paragraph = paragraph_of(res, "QLoRA")
    assert "a saving at this scale" in paragraph and "no saving" not in paragraph


def test_lora_verdict_counts_the_tuned_rates():
    res = results()
    assert res["verdicts"]["lora"]["verdict"] == "reproduces"
    assert "No variant at any rate ended more than 5% lower" in paragraph_of(res, "LoRA")
    # LoRA+ at its own rate 11% better than LoRA at its best: no longer "reproduces".
    finals = copy.deepcopy(FINALS)
    finals[("loraplus", 1e-3)] = [0.97, 0.98, 0.99]
    res = results(finals)
    assert res["claims"]["lora"]["loss_gap_pct"] < 5  # at the same settings it looked fine
    assert res["verdicts"]["lora"]["verdict"] == "partly"
    paragraph = paragraph_of(res, "LoRA")
    assert "More than 5% lower than LoRA's at its best rate: LoRA+ at 0.001" in paragraph
    assert "one task can only fail to contradict it" not in paragraph
    gap = 100 * (1.10 / 0.98 - 1)  # LoRA at 4e-3 against LoRA+ at 1e-3, means over seeds
    assert res["advisor_evidence"]["lora"]["tuned_loss_gap_pct"] == pytest.approx(gap, abs=0.1)
