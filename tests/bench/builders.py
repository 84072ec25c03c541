"""Constructed results for the evidence benchmark's tests: runs whose held-out loss falls to a
chosen final value, memory probes and 7B estimates, summarized as `summarize` does for a real
run. The defaults are described at `FINALS`; each test changes the figures its conclusion
rests on."""

from __future__ import annotations

from bench.evidence.analysis import pick_learning_rate
from bench.evidence.summary import summarize
from bench.evidence.variants import VARIANTS

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


def run_record(key: str, lr: float, seed: int, final: float, reach: int = STEPS) -> dict:
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


def memory_figures(
    lora_peak: float = 175.0, qlora_peak: float = 176.4, nf4_loss: float = 4.40
) -> dict:
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
        run_record(key, lr, seed, final, (reach or {}).get((key, lr), STEPS))
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
        "memory": memory or memory_figures(),
        "estimate_7b": _estimate(),
        "runs": runs,
        "timing": timing
        or {"total_seconds": 1200.0, "base_seconds": 1.0, "base_cached": True, "cpu_seconds": 2000},
    }
    return summarize(measured)


def paragraph_of(res: dict, name: str) -> str:
    """The discussion's paragraph about the claim `name` ("LoRA+", "DoRA", ...)."""
    return next(line for line in res["discussion"] if line.startswith(name + " ("))
