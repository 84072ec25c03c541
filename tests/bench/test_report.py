"""The evidence benchmark's verdicts and sentences follow the figures they describe: each
conclusion is checked here with constructed results, once with the numbers that support it
and once with numbers that do not."""

from __future__ import annotations

import copy

import pytest

from bench.evidence import VARIANTS, summarize
from bench.evidence.analysis import pick_learning_rate
from bench.evidence.report import markdown

BASE_LR = 2e-3
SWEEP = [5e-4, 1e-3, 2e-3, 4e-3, 8e-3]
SEEDS = [0, 1, 2]
STEPS = 100
MIB = 1 << 20

# Final held-out loss per (variant, learning rate), one per seed; a rate with one value ran
# on the first seed only. The defaults: LoRA's best rate 4e-3, LoRA+'s 1e-3 (both inside the
# sweep); LoRA+ worse than LoRA at LoRA's rate and about level with LoRA at each one's best;
# DoRA within the spread of seeds; QLoRA level with LoRA.
FINALS: dict[tuple[str, float], list[float]] = {
    ("lora", 2e-3): [1.10, 1.12, 1.14],
    ("loraplus", 2e-3): [1.30, 1.32, 1.34],
    ("dora", 2e-3): [1.08, 1.13, 1.13],
    ("qlora", 2e-3): [1.11, 1.12, 1.13],
    ("qlora+loraplus", 2e-3): [1.31, 1.32, 1.33],
    ("qlora+dora", 2e-3): [1.10, 1.12, 1.14],
    ("lora", 5e-4): [1.40],
    ("lora", 1e-3): [1.25],
    ("lora", 4e-3): [1.09, 1.10, 1.11],
    ("lora", 8e-3): [1.10, 1.11, 1.12],
    ("loraplus", 5e-4): [1.11, 1.12, 1.13],
    ("loraplus", 1e-3): [1.09, 1.10, 1.11],
    ("loraplus", 4e-3): [1.50],
    ("loraplus", 8e-3): [1.90],
    ("qlora", 4e-3): [1.08, 1.09, 1.10],
    ("qlora+loraplus", 1e-3): [1.09, 1.10, 1.11],
}


def _run(key: str, lr: float, seed: int, final: float, reach: int = STEPS) -> dict:
    """A run whose held-out loss falls linearly from 3.0 to `final` by step `reach`."""
    evals = []
    for step in range(0, STEPS + 1, 10):
        loss = 3.0 + (final - 3.0) * min(step, reach) / reach
        evals.append(
            {
                "step": step,
                "eval_loss": loss,
                "token_accuracy": 0.5,
                "exact_match": 0.3 * step / STEPS,
                "exact_match_by_kind": {"add": 0.3 * step / STEPS},
            }
        )
    return {
        "key": key,
        "learning_rate": lr,
        "seed": seed,
        "group": "grid",
        "evals": evals,
        "steps": STEPS,
        "trainable_parameters": 1030 if "dora" in key else 1000,
        "all_parameters": 20_000,
        "median_step_seconds": 0.2,
        "median_step_cpu_seconds": 0.2,
    }


def _memory(lora_peak: float = 175.0, qlora_peak: float = 176.4, nf4_loss: float = 4.40) -> dict:
    def probe(key: str) -> dict:
        quantized = key.startswith("qlora")
        return {
            "peak_memory": {
                "device": "cpu",
                "rss_growth_bytes": int((qlora_peak if quantized else lora_peak) * MIB),
            },
            "model_bytes": {
                "weights": 4 * MIB if quantized else 9 * MIB,
                "adapted_linears": MIB if quantized else 6 * MIB,
                "adapted_linears_parameters": 6 * MIB // 4,
                "trainable": MIB,
            },
            "base_lm_loss": nf4_loss if quantized else 4.38,
        }

    return {key: probe(key) for key in VARIANTS}


def _estimate() -> dict:
    per = {
        key: {"total_gb": 6.6 if "qlora" in key else 16.8, "total_gib": 6.1, "weights_gib": 1.0}
        for key in VARIANTS
    }
    block = {"per_variant": per, "lora_total_gb": 16.8, "qlora_total_gb": 6.6}
    return {"model": "7b", "method": "analytic", "seq_len_512": block, "seq_len_2048": block}


def results(
    finals: dict[tuple[str, float], list[float]] | None = None,
    *,
    reach: dict[tuple[str, float], int] | None = None,
    memory: dict | None = None,
    timing: dict | None = None,
    sweep: list[float] = SWEEP,
    parameters: int = 20_000,
) -> dict:
    """Results as `summarize` makes them from constructed runs."""
    finals = finals or FINALS
    runs = [
        _run(key, lr, seed, final, (reach or {}).get((key, lr), STEPS))
        for (key, lr), values in finals.items()
        for seed, final in zip(SEEDS, values, strict=False)
    ]
    picks = {key: pick_learning_rate(runs, key, SEEDS, sweep) for key in ("lora", "loraplus")}
    measured = {
        "machine": {"date": "2026-01-02 03:04:05 UTC", "cpus": 2, "platform": "x", "python": "3"},
        "mode": "full",
        "setup": {
            "command": "python -m bench evidence",
            "model": "a Llama",
            "model_short": "Llama 0.0M",
            "task_name": "t",
            "task": "t.",
            "examples": [],
            "majority_by_kind": {"add": 0.2, "all": 0.2},
            "train_rows": 10,
            "eval_rows": 10,
            "steps": STEPS,
            "batch_size": 1,
            "eval_every": 10,
            "seeds": SEEDS,
            "learning_rate": BASE_LR,
            "sweep": sweep,
            "finalists": 2,
            "lora_rank": 16,
            "variants": list(VARIANTS),
            "device": "CPU",
            "versions": {"python": "3"},
        },
        "base": {
            "key": "k",
            "parameters": parameters,
            "spec": {
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "vocab_size": 256,
                "steps": 10,
                "seed": 0,
            },
            "held_out_loss": {"pretrained": 4.4, "unigram_entropy": 6.3, "random_init": 7.7},
            "corpus": {"tokens_seen": 1, "train_files": 1, "train_tokens": 1, "held_out_files": 1},
            "weights_sha256": "0" * 64,
            "cached": True,
            "build_seconds": 240.0,
        },
        "best_learning_rate": {k: p["learning_rate"] for k, p in picks.items()},
        "learning_rate_pick": picks,
        "memory": memory or _memory(),
        "estimate_7b": _estimate(),
        "runs": runs,
        "timing": timing
        or {"total_seconds": 1200.0, "base_seconds": 1.0, "base_cached": True, "cpu_seconds": 2000},
    }
    return summarize(measured)


def _paragraph(res: dict, name: str) -> str:
    return next(line for line in res["discussion"] if line.startswith(name + " ("))


def test_constructed_results_render_to_markdown():
    text = markdown(results(), {"eval_loss": "e.png", "memory": "m.png"})
    assert "## What reproduces, what does not, and why that may be" in text


# -- DoRA ---------------------------------------------------------------------------------


def test_dora_within_the_spread_of_seeds_does_not_reproduce_even_with_few_parameters():
    res = results()
    verdict = res["verdicts"]["dora"]
    assert verdict["checks"] == {"quality": "does not reproduce", "parameters": "reproduces"}
    assert verdict["verdict"] == "does not reproduce"
    assert "this run cannot tell DoRA's quality from LoRA's" in _paragraph(res, "DoRA")


def test_dora_clearly_better_on_every_seed_reproduces():
    finals = copy.deepcopy(FINALS)
    finals[("dora", 2e-3)] = [1.06, 1.08, 1.10]  # 3-4% lower than LoRA on every seed
    res = results(finals)
    assert res["verdicts"]["dora"]["verdict"] == "reproduces"
    paragraph = _paragraph(res, "DoRA")
    assert "lower by more than the spread" in paragraph
    assert "cannot tell" not in paragraph


def test_dora_rank_sentence_follows_the_adapters_share_of_the_model():
    # The adapter is 1,000 parameters: 5% of a 20,000-parameter model, 0.1% of a 1M one.
    assert "rank is less likely to limit LoRA here" in _paragraph(results(), "DoRA")
    small_share = _paragraph(results(parameters=1_000_000), "DoRA")
    assert "rank is less likely" not in small_share


# -- QLoRA --------------------------------------------------------------------------------


def test_qlora_without_a_measured_saving_is_partly_and_says_so():
    res = results()
    verdict = res["verdicts"]["qlora"]
    assert verdict["checks"] == {
        "memory_7b": "reproduces",
        "memory_small": "does not reproduce",
        "quality": "reproduces",
    }
    assert verdict["verdict"] == "partly"
    paragraph = _paragraph(res, "QLoRA")
    assert "no saving at this scale" in paragraph
    assert "memory the allocator holds on to" in paragraph  # the weights are 5% of the peak
    assert res["advisor_evidence"]["qlora"]["peak_ratio_small"] == pytest.approx(1.008, 1e-3)


def test_qlora_with_a_measured_saving_reproduces():
    res = results(memory=_memory(lora_peak=175.0, qlora_peak=100.0))
    assert res["verdicts"]["qlora"]["verdict"] == "reproduces"
    paragraph = _paragraph(res, "QLoRA")
    assert "a saving at this scale" in paragraph and "no saving" not in paragraph


def test_qlora_ratio_is_against_16_bit_weights_too():
    small = results()["claims"]["qlora"]["measured_small"]
    # 1 MiB of NF4 against 6 MiB of fp32 (1.5M weights): 1/6 as run, 1/3 of 16 bits.
    assert small["adapted_linears_ratio_as_run"] == pytest.approx(1 / 6)
    assert small["adapted_linears_ratio_16bit"] == pytest.approx(1 / 3)


def test_nf4_cost_sentence_follows_the_base_loss():
    assert "NF4 itself costs the pretrained model little" in _paragraph(results(), "QLoRA")
    costly = _paragraph(results(memory=_memory(nf4_loss=4.8)), "QLoRA")
    assert "costs the pretrained model little" not in costly
    assert "NF4 itself costs the pretrained model: " in costly


# -- LoRA+ --------------------------------------------------------------------------------


def test_loraplus_sentences_follow_the_figures():
    paragraph = _paragraph(results(), "LoRA+")
    # LoRA+ ended worse than LoRA at LoRA's rate, and did better at a lower rate.
    assert "LoRA+ did better at a lower rate (its best, 0.001)" in paragraph
    assert "where LoRA ends within 2% of its loss at its best rate" in paragraph
    assert "ended about level" in paragraph


def test_loraplus_that_ends_lower_and_sooner_at_its_best_says_so():
    finals = copy.deepcopy(FINALS)
    finals[("loraplus", 1e-3)] = [0.95, 0.96, 0.97]
    reach = {("loraplus", 1e-3): 50}
    paragraph = _paragraph(results(finals, reach=reach), "LoRA+")
    assert "and ended lower" in paragraph
    assert "So the speed-up needs LoRA+'s own, lower learning rate" in paragraph
    assert "reused at LoRA's rate LoRA+ ends worse than LoRA" in paragraph


def test_loraplus_that_helps_at_lora_rate_does_not_claim_it_hurts_there():
    finals = copy.deepcopy(FINALS)
    finals[("loraplus", 2e-3)] = [1.00, 1.01, 1.02]  # now better than LoRA at LoRA's rate
    finals[("loraplus", 1e-3)] = [1.05, 1.06, 1.07]
    reach = {("loraplus", 2e-3): 50, ("loraplus", 1e-3): 50}
    res = results(finals, reach=reach)
    paragraph = _paragraph(res, "LoRA+")
    assert "ends worse than LoRA" not in paragraph
    assert "did better at a lower rate" not in paragraph
    assert res["best_learning_rate"]["loraplus"] == 2e-3
    assert "LoRA+ sped training up by at least 1.1x both at LoRA's rate and at its own" in (
        paragraph
    )


def test_loraplus_where_lora_is_far_from_its_best_drops_the_aside():
    finals = copy.deepcopy(FINALS)
    finals[("lora", 4e-3)] = [0.90, 0.91, 0.92]  # LoRA does much better at 4e-3 than 2e-3
    assert "where LoRA ends within 2%" not in _paragraph(results(finals), "LoRA+")


# -- LoRA ---------------------------------------------------------------------------------


def test_lora_verdict_counts_the_tuned_rates():
    res = results()
    assert res["verdicts"]["lora"]["verdict"] == "reproduces"
    assert "No variant at any rate ended more than 5% lower" in _paragraph(res, "LoRA")
    # LoRA+ at its own rate 11% better than LoRA at its best: no longer "reproduces".
    finals = copy.deepcopy(FINALS)
    finals[("loraplus", 1e-3)] = [0.97, 0.98, 0.99]
    res = results(finals)
    assert res["claims"]["lora"]["loss_gap_pct"] < 5  # at the same settings it looked fine
    assert res["verdicts"]["lora"]["verdict"] == "partly"
    paragraph = _paragraph(res, "LoRA")
    assert "More than 5% lower than LoRA's at its best rate: LoRA+ at 0.001" in paragraph
    assert "one task can only fail to contradict it" not in paragraph
    gap = 100 * (1.10 / 0.98 - 1)  # LoRA at 4e-3 against LoRA+ at 1e-3, means over seeds
    assert res["advisor_evidence"]["lora"]["tuned_loss_gap_pct"] == pytest.approx(gap, abs=0.1)


# -- the sweep ----------------------------------------------------------------------------


def test_pick_rests_on_the_mean_over_seeds_not_the_first_seed():
    runs = [
        _run("lora", 1e-3, 0, 1.00),  # the first seed's favourite...
        _run("lora", 1e-3, 1, 1.30),
        _run("lora", 1e-3, 2, 1.30),
        _run("lora", 2e-3, 0, 1.05),  # ...loses on the mean
        _run("lora", 2e-3, 1, 1.06),
        _run("lora", 2e-3, 2, 1.07),
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
    assert "LoRA's best rate is the highest the sweep tried" in _paragraph(narrow, "LoRA+")


# -- run time -----------------------------------------------------------------------------


def test_run_time_sentences_come_from_the_records():
    res = results(
        timing={"total_seconds": 1500.0, "base_seconds": 250.0, "base_cached": False},
    )
    res["quick_timings"] = {
        "cold": {"total_seconds": 180.0, "base_seconds": 50.0, "date": "2026-01-01", "cpus": 2},
        "warm": {"total_seconds": 126.0, "base_seconds": 0.1, "date": "2026-01-01", "cpus": 2},
    }
    text = markdown(res, {"eval_loss": "e", "memory": "m"})
    assert "This run took 25.0 minutes of wall time, building the base model in the run " in text
    assert "(4.2 minutes of it), within its budget of 30 minutes on 2 cores" in text
    assert "it took 3.0 minutes building its base in the run" in text
    assert "and 2.1 minutes with its base cached" in text
    over = results(timing={"total_seconds": 1900.0, "base_seconds": 250.0, "base_cached": False})
    assert "over its budget of 30 minutes" in markdown(over, {"eval_loss": "e", "memory": "m"})
    # A cached base's recorded build time counts against the budget.
    cached = results(timing={"total_seconds": 1700.0, "base_seconds": 1.0, "base_cached": True})
    text = markdown(cached, {"eval_loss": "e", "memory": "m"})
    assert "it comes to 32.3 minutes, over its budget" in text
    assert "no quick run has recorded its time yet" in text
