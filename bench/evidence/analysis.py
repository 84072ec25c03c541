"""From run records to the figures of each claim. Pure: lists and dicts in, dicts out.

A run record (see `bench.evidence.pipeline`) holds `key` (the variant combination, e.g.
`qlora+loraplus`), `learning_rate`, `seed`, `evals` (held-out metrics by step, step 0 first)
and the run's timings and sizes.

Conventions:
- Spread is over seeds: mean, sample standard deviation, min and max. Seeds pair up (the same
  seed gives two variants the same data order and the same lora_A initialization), so ratios
  are taken per seed, then summarized.
- "Steps to the target": the target is the worst final eval loss among the baseline's seeds,
  the quality the baseline is sure to reach within the budget. The step at which a run first
  reaches it is interpolated linearly between evaluations. A run that never reaches it has
  no step (`None`), and its speedup is reported as not reached.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

METRICS = ("eval_loss", "exact_match", "token_accuracy")


def spread(values: Iterable[float | None]) -> dict[str, Any]:
    """mean, sample std (0 for one value), min, max and n of the values that exist."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def mean(block: dict[str, Any] | None) -> float | None:
    """The mean of a `spread`, None when there is no figure."""
    return None if not block else block.get("mean")


def final(run: dict[str, Any]) -> dict[str, float]:
    return run["evals"][-1]


def steps_to(run: dict[str, Any], target: float) -> float | None:
    """First (interpolated) step at which the held-out loss is at or below `target`."""
    previous = None
    for point in run["evals"]:
        step, loss = point["step"], point["eval_loss"]
        if loss <= target:
            if previous is None or previous[1] == loss:
                return float(step)
            s0, l0 = previous
            return s0 + (l0 - target) / (l0 - loss) * (step - s0)
        previous = (step, loss)
    return None


def select(runs: list[dict[str, Any]], key: str, lr: float | None = None) -> list[dict[str, Any]]:
    """Runs of one combination (at one learning rate when given), by seed."""
    chosen = [r for r in runs if r["key"] == key and (lr is None or _same(r["learning_rate"], lr))]
    return sorted(chosen, key=lambda r: r["seed"])


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-12 * max(abs(a), abs(b))


def _paired(base: list[dict[str, Any]], other: list[dict[str, Any]]):
    by_seed = {r["seed"]: r for r in other}
    return [(b, by_seed[b["seed"]]) for b in base if b["seed"] in by_seed]


def speedup(base: list[dict[str, Any]], fast: list[dict[str, Any]]) -> dict[str, Any]:
    """How much sooner `fast` reaches the baseline's worst final eval loss than `base`."""
    if not base or not fast:
        return {"target_eval_loss": None, "speedup": spread([]), "per_seed": []}
    target = max(final(r)["eval_loss"] for r in base)
    per_seed = []
    for b, f in _paired(base, fast):
        sb, sf = steps_to(b, target), steps_to(f, target)
        per_seed.append(
            {
                "seed": b["seed"],
                "baseline_steps": sb,
                "steps": sf,
                "speedup": sb / sf if sb and sf else None,
            }
        )
    return {
        "target_eval_loss": target,
        "baseline_steps": spread(p["baseline_steps"] for p in per_seed),
        "steps": spread(p["steps"] for p in per_seed),
        "speedup": spread(p["speedup"] for p in per_seed),
        "reached": sum(p["steps"] is not None for p in per_seed),
        "per_seed": per_seed,
    }


def quality(base: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
    """Final held-out metrics of both, and the per-seed differences (other - base): eval loss
    in nats and relative %, exact match and token accuracy in percentage points."""
    pairs = _paired(base, other)
    return {
        "baseline": {m: spread(final(r)[m] for r in base) for m in METRICS},
        "variant": {m: spread(final(r)[m] for r in other) for m in METRICS},
        "eval_loss_diff": spread(final(o)["eval_loss"] - final(b)["eval_loss"] for b, o in pairs),
        "eval_loss_diff_pct": spread(
            100 * (final(o)["eval_loss"] / final(b)["eval_loss"] - 1) for b, o in pairs
        ),
        "exact_match_diff_pts": spread(
            100 * (final(o)["exact_match"] - final(b)["exact_match"]) for b, o in pairs
        ),
        "token_accuracy_diff_pts": spread(
            100 * (final(o)["token_accuracy"] - final(b)["token_accuracy"]) for b, o in pairs
        ),
    }


def overhead(base: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
    """Trainable parameters over the baseline's (% of its adapter and % of the whole model)
    and step time over the baseline's, per seed (%): from the median CPU time per step (the
    process's, all threads), which a busy shared machine inflates far less than the wall
    clock; the wall-clock medians are kept beside it."""
    pairs = _paired(base, other)
    if not pairs:
        return {}
    b0, o0 = pairs[0]
    extra = o0["trainable_parameters"] - b0["trainable_parameters"]

    def pct(field: str) -> dict[str, Any]:
        return spread(100 * (o[field] / b[field] - 1) for b, o in pairs if b[field] and o[field])

    return {
        "trainable_parameters": o0["trainable_parameters"],
        "baseline_trainable_parameters": b0["trainable_parameters"],
        "extra_parameters": extra,
        "extra_parameters_pct_of_adapter": 100 * extra / b0["trainable_parameters"],
        "extra_parameters_pct_of_model": 100 * extra / b0["all_parameters"],
        "step_cpu_seconds": spread(o["median_step_cpu_seconds"] for _, o in pairs),
        "baseline_step_cpu_seconds": spread(b["median_step_cpu_seconds"] for b, _ in pairs),
        "step_time_pct": pct("median_step_cpu_seconds"),
        "step_wall_time_pct": pct("median_step_seconds"),
    }


def finalists(
    runs: list[dict[str, Any]], key: str, seed: int, n: int, exclude: float
) -> list[float]:
    """The `n` learning rates (other than `exclude`, which runs on every seed anyway) whose
    runs of `key` at `seed` ended with the lowest held-out loss: the ones worth running on
    the other seeds."""
    candidates = [
        r
        for r in runs
        if r["key"] == key and r["seed"] == seed and not _same(r["learning_rate"], exclude)
    ]
    ranked = sorted(candidates, key=lambda r: final(r)["eval_loss"])
    return [r["learning_rate"] for r in ranked[:n]]


def pick_learning_rate(
    runs: list[dict[str, Any]], key: str, seeds: list[int], sweep: list[float]
) -> dict[str, Any]:
    """The learning rate of `key` with the lowest final held-out loss, averaged over `seeds`,
    among the rates that ran on all of them; from the first seed alone when none did. Says
    where the pick lies in the sweep: at its lowest or highest rate, a rate beyond the sweep
    may be better still."""
    by_rate: dict[float, dict[int, float]] = {}
    for r in runs:
        if r["key"] == key and r["seed"] in seeds:
            by_rate.setdefault(r["learning_rate"], {})[r["seed"]] = final(r)["eval_loss"]
    if not by_rate:
        return {"learning_rate": None, "picked_on": None, "edge": None, "mean_eval_loss": {}}
    complete = {
        lr: statistics.fmean(per.values()) for lr, per in by_rate.items() if set(seeds) <= set(per)
    }
    if complete:
        best = min(complete, key=lambda lr: complete[lr])
        picked_on = f"mean of {len(seeds)} seeds"
    else:
        first = {lr: per[seeds[0]] for lr, per in by_rate.items() if seeds[0] in per}
        best = min(first, key=lambda lr: first[lr])
        picked_on = f"seed {seeds[0]}"
    edge = None
    if sweep and len(sweep) > 1:
        if _same(best, min(sweep)):
            edge = "lowest"
        elif _same(best, max(sweep)):
            edge = "highest"
    return {
        "learning_rate": best,
        "picked_on": picked_on,
        "edge": edge,
        "mean_eval_loss": {f"{lr:g}": mean for lr, mean in sorted(complete.items())},
    }


def curves(runs: list[dict[str, Any]], key: str, lr: float) -> dict[str, Any]:
    """Mean, min and max held-out loss by evaluation step over the seeds (for plots)."""
    chosen = select(runs, key, lr)
    if not chosen:
        return {"steps": [], "mean": [], "min": [], "max": []}
    steps = [p["step"] for p in chosen[0]["evals"]]
    losses = [[r["evals"][i]["eval_loss"] for r in chosen] for i in range(len(steps))]
    return {
        "steps": steps,
        "mean": [statistics.fmean(x) for x in losses],
        "min": [min(x) for x in losses],
        "max": [max(x) for x in losses],
    }


CLEARLY_BETTER_PCT = 5.0
"""A held-out loss this much lower than LoRA's is "clearly better" (the LoRA rule's bound)."""


def tuned_comparison(runs: list[dict[str, Any]], lora_lr: float, n_seeds: int) -> dict[str, Any]:
    """LoRA at its best learning rate against every combination at every rate that ran on
    all seeds: the best of them, LoRA's gap to it (%), and those clearly better than LoRA."""
    groups: dict[tuple[str, float], list[float]] = {}
    for r in runs:
        groups.setdefault((r["key"], r["learning_rate"]), []).append(final(r)["eval_loss"])
    means = {g: statistics.fmean(v) for g, v in groups.items() if len(v) >= n_seeds}
    lora = next((m for (k, lr), m in means.items() if k == "lora" and _same(lr, lora_lr)), None)
    if lora is None or not means:
        return {
            "lora_learning_rate": lora_lr,
            "lora_eval_loss": lora,
            "best": None,
            "loss_gap_pct": None,
            "clearly_better": [],
        }
    (key, lr), best = min(means.items(), key=lambda kv: kv[1])
    clearly = [
        {"key": k, "learning_rate": r, "eval_loss": m, "lora_gap_pct": 100 * (lora / m - 1)}
        for (k, r), m in sorted(means.items(), key=lambda kv: kv[1])
        if 100 * (lora / m - 1) > CLEARLY_BETTER_PCT
    ]
    return {
        "lora_learning_rate": lora_lr,
        "lora_eval_loss": lora,
        "best": {"key": key, "learning_rate": lr, "eval_loss": best},
        "loss_gap_pct": 100 * (lora / best - 1),
        "clearly_better": clearly,
    }


def measured_small(lora: dict[str, Any], qlora: dict[str, Any]) -> dict[str, Any]:
    """QLoRA against LoRA on the benchmark's own model, from the memory probes: the peak
    (growth of the process's resident memory during the run), the share of LoRA's peak that
    its frozen weights are, and the bytes of the adapted linear layers: NF4 against LoRA's
    as stored in this run (fp32 on CPU) and against the same layers in 16 bits (as a GPU run
    keeps them; 2 bytes per weight)."""

    def get(figures: dict[str, Any], *path: str) -> Any:
        for key in path:
            figures = figures.get(key) if isinstance(figures, dict) else None  # type: ignore[assignment]
        return figures

    peak = {
        k: get(m, "peak_memory", "rss_growth_bytes") for k, m in (("lora", lora), ("qlora", qlora))
    }
    weights = get(lora, "model_bytes", "weights")
    adapted = {
        k: get(m, "model_bytes", "adapted_linears") for k, m in (("lora", lora), ("qlora", qlora))
    }
    params = get(lora, "model_bytes", "adapted_linears_parameters")
    return {
        "peak_rss_growth_bytes": peak,
        "peak_ratio": peak["qlora"] / peak["lora"] if peak["lora"] and peak["qlora"] else None,
        "lora_weights_bytes": weights,
        "lora_weights_share_of_peak": weights / peak["lora"] if weights and peak["lora"] else None,
        "adapted_linears_ratio_as_run": adapted["qlora"] / adapted["lora"]
        if adapted["lora"] and adapted["qlora"]
        else None,
        "adapted_linears_ratio_16bit": adapted["qlora"] / (2 * params)
        if params and adapted["qlora"]
        else None,
    }


def claims(
    runs: list[dict[str, Any]],
    *,
    base_lr: float,
    best_lr: dict[str, float],
    memory: dict[str, Any],
    estimate_7b: dict[str, Any],
) -> dict[str, Any]:
    """Every claim's figures, keyed by the claim."""
    at = {key: select(runs, key, base_lr) for key in {r["key"] for r in runs}}
    lora_best = select(runs, "lora", best_lr.get("lora", base_lr))
    plus_best = select(runs, "loraplus", best_lr.get("loraplus", base_lr))

    def mem(key: str) -> dict[str, Any]:
        return memory.get(key, {})

    finals = {k: spread(final(r)["exact_match"] for r in v) for k, v in at.items()}
    tuned = tuned_comparison(runs, best_lr.get("lora", base_lr), len(at["lora"]))
    losses = {k: spread(final(r)["eval_loss"] for r in v) for k, v in at.items()}
    # The best variant at the same settings: the lowest held-out loss.
    best_key = min(
        losses, key=lambda k: losses[k]["mean"] if losses[k]["mean"] is not None else 1e9
    )
    return {
        "loraplus": {
            "seed_says": "reaches the target quality roughly 1.5-2x faster",
            "same_lr": {"learning_rate": base_lr, **speedup(at["lora"], at["loraplus"])},
            "best_lr": {
                "lora_learning_rate": best_lr.get("lora"),
                "loraplus_learning_rate": best_lr.get("loraplus"),
                **speedup(lora_best, plus_best),
            },
            "quality_same_lr": quality(at["lora"], at["loraplus"]),
            "quality_best_lr": quality(lora_best, plus_best),
        },
        "dora": {
            "seed_says": "raises quality by a few percent with under 5% more parameters",
            "quality": quality(at["lora"], at["dora"]),
            "overhead": overhead(at["lora"], at["dora"]),
        },
        "qlora": {
            "seed_says": "a 7B model in about 6 GB instead of about 16 GB; quality almost "
            "untouched",
            "quality": quality(at["lora"], at["qlora"]),
            "overhead": overhead(at["lora"], at["qlora"]),
            "memory_small": {"lora": mem("lora"), "qlora": mem("qlora")},
            "measured_small": measured_small(mem("lora"), mem("qlora")),
            "memory_7b": estimate_7b,
        },
        "qlora+loraplus": {
            "seed_says": "the ideas combine",
            "speed_vs_qlora": speedup(at["qlora"], at["qlora+loraplus"]),
            "speed_vs_qlora_best_lr": {
                "qlora_learning_rate": best_lr.get("lora"),
                "learning_rate": best_lr.get("loraplus"),
                **speedup(
                    select(runs, "qlora", best_lr.get("lora", base_lr)),
                    select(runs, "qlora+loraplus", best_lr.get("loraplus", base_lr)),
                ),
            },
            "quality_vs_qlora": quality(at["qlora"], at["qlora+loraplus"]),
            "quality_vs_lora": quality(at["lora"], at["qlora+loraplus"]),
            "memory_small": mem("qlora+loraplus"),
        },
        "qlora+dora": {
            "seed_says": "the ideas combine",
            "quality_vs_qlora": quality(at["qlora"], at["qlora+dora"]),
            "quality_vs_lora": quality(at["lora"], at["qlora+dora"]),
            "overhead_vs_qlora": overhead(at["qlora"], at["qlora+dora"]),
            "memory_small": mem("qlora+dora"),
        },
        "lora": {
            "seed_says": "standard LoRA still works well for most jobs",
            "eval_loss": losses.get("lora"),
            "exact_match": finals.get("lora"),
            "best_variant": best_key,
            "best_eval_loss": losses[best_key],
            "best_exact_match": finals[best_key],
            "loss_gap_pct": (
                100 * (losses["lora"]["mean"] / losses[best_key]["mean"] - 1)
                if losses["lora"]["mean"] and losses[best_key]["mean"]
                else None
            ),
            "tuned": tuned,
            "base_exact_match": spread(r["evals"][0]["exact_match"] for r in at["lora"]),
            "base_eval_loss": spread(r["evals"][0]["eval_loss"] for r in at["lora"]),
        },
    }
