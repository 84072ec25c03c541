"""The discussion's sentences follow the figures they describe: each is checked with constructed
results that support it and with results that do not."""

from __future__ import annotations

import copy

from tests.bench.builders import FINALS, memory_figures, paragraph_of, results


def test_dora_rank_sentence_follows_the_adapters_share_of_the_model():
    # The adapter is 1,000 parameters: 5% of a 20,000-parameter model, 0.1% of a 1M one.
    assert "rank is less likely to limit LoRA here" in paragraph_of(results(), "DoRA")
    small_share = paragraph_of(results(parameters=1_000_000), "DoRA")
    assert "rank is less likely" not in small_share


def test_nf4_cost_sentence_follows_the_base_loss():
    assert "NF4 itself costs the pretrained model little" in paragraph_of(results(), "QLoRA")
    costly = paragraph_of(results(memory=memory_figures(nf4_loss=4.8)), "QLoRA")
    assert "costs the pretrained model little" not in costly
    assert "NF4 itself costs the pretrained model: " in costly


def test_loraplus_sentences_follow_the_figures():
    paragraph = paragraph_of(results(), "LoRA+")
    # LoRA+ ended worse than LoRA at LoRA's rate, and did better at a lower rate.
    assert "LoRA+ did better at a lower rate (its best, 0.001)" in paragraph
    assert "where LoRA ends within 2% of its loss at its best rate" in paragraph
    assert "ended about level" in paragraph


def test_loraplus_that_ends_lower_and_sooner_at_its_best_says_so():
    finals = copy.deepcopy(FINALS)
    finals[("loraplus", 1e-3)] = [0.95, 0.96, 0.97]
    reach = {("loraplus", 1e-3): 50}
    paragraph = paragraph_of(results(finals, reach=reach), "LoRA+")
    assert "and ended lower" in paragraph
    assert "So the speed-up needs LoRA+'s own, lower learning rate" in paragraph
    assert "reused at LoRA's rate LoRA+ ends worse than LoRA" in paragraph


def test_loraplus_that_helps_at_lora_rate_does_not_claim_it_hurts_there():
    finals = copy.deepcopy(FINALS)
    finals[("loraplus", 2e-3)] = [1.00, 1.01, 1.02]  # now better than LoRA at LoRA's rate
    finals[("loraplus", 1e-3)] = [1.05, 1.06, 1.07]
    reach = {("loraplus", 2e-3): 50, ("loraplus", 1e-3): 50}
    res = results(finals, reach=reach)
    paragraph = paragraph_of(res, "LoRA+")
    assert "ends worse than LoRA" not in paragraph
    assert "did better at a lower rate" not in paragraph
    assert res["best_learning_rate"]["loraplus"] == 2e-3
    assert "LoRA+ sped training up by at least 1.1x both at LoRA's rate and at its own" in (
        paragraph
    )


def test_loraplus_where_lora_is_far_from_its_best_drops_the_aside():
    finals = copy.deepcopy(FINALS)
    finals[("lora", 4e-3)] = [0.90, 0.91, 0.92]  # LoRA does much better at 4e-3 than 2e-3
    assert "where LoRA ends within 2%" not in paragraph_of(results(finals), "LoRA+")
