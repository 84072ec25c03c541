"""The figures of each claim, from run records: the learning-rate pick over seeds and its
edge, and QLoRA's ratio of weight bytes."""

from __future__ import annotations

import pytest

from bench.evidence.analysis import pick_learning_rate
from bench.evidence.benchmarks_md import markdown
from tests.bench.builders import SEEDS, paragraph_of, results, run_record


def test_qlora_ratio_is_against_16_bit_weights_too():
    small = results()["claims"]["qlora"]["measured_small"]
    # 1 MiB of NF4 against 6 MiB of fp32 (1.5M weights): 1/6 as run, 1/3 of 16 bits.
    assert small["adapted_linears_ratio_as_run"] == pytest.approx(1 / 6)
    assert small["adapted_linears_ratio_16bit"] == pytest.approx(1 / 3)


def test_pick_rests_on_the_mean_over_seeds_not_the_first_seed():
    runs = [
        run_record("lora", 1e-3, 0, 1.00),  # the first seed's favourite...
        run_record("lora", 1e-3, 1, 1.30),
        run_record("lora", 1e-3, 2, 1.30),
        run_record("lora", 2e-3, 0, 1.05),  # ...loses on the mean
        run_record("lora", 2e-3, 1, 1.06),
        run_record("lora", 2e-3, 2, 1.07),
    ]
    pick = pick_learning_rate(runs, "lora", SEEDS, [1e-3, 2e-3, 4e-3])
    assert pick["learning_rate"] == 2e-3 and pick["picked_on"] == "mean of 3 seeds"
    assert pick["edge"] is None


def test_a_pick_at_the_edge_of_the_sweep_is_flagged_and_reported():
    res = results()
    assert all(p["edge"] is None for p in res["learning_rate_pick"].values())
    assert "of the sweep**" not in markdown(res, {"eval_loss": "e", "memory": "m"})
    narrow = results(sweep=[1e-3, 2e-3, 4e-3])  # LoRA's 4e-3 and LoRA+'s 1e-3 now edges
    assert narrow["learning_rate_pick"]["lora"]["edge"] == "highest"
    assert narrow["learning_rate_pick"]["loraplus"]["edge"] == "lowest"
    text = markdown(narrow, {"eval_loss": "e", "memory": "m"})
    assert "**LoRA's best rate is the highest of the sweep**" in text
    assert "**LoRA+'s best rate is the lowest of the sweep**" in text
    assert "LoRA's best rate is the highest the sweep tried" in paragraph_of(narrow, "LoRA+")
