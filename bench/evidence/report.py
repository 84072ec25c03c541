"""What the benchmark publishes: verdicts, the advisor's evidence file, plots and
BENCHMARKS.md. Everything here reads the results dict that `bench.evidence.main` writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.evidence import analysis

VARIANT_LABELS = {
    "lora": "LoRA",
    "loraplus": "LoRA+",
    "dora": "DoRA",
    "qlora": "QLoRA",
    "qlora+loraplus": "QLoRA + LoRA+",
    "qlora+dora": "QLoRA + DoRA",
}
MIB = 1 << 20
GIB = 1 << 30


# ---------------------------------------------------------------------------------------------
# Verdicts: one rule per claim, written out so the reader can check it
# ---------------------------------------------------------------------------------------------


def _mean(block: dict[str, Any] | None) -> float | None:
    return None if not block else block.get("mean")


def headline_7b(memory_7b: dict[str, Any]) -> dict[str, Any]:
    """The 7B figure a verdict uses: the tracer's when it answered, else the analytic one."""
    traced = memory_7b.get("traced_seq_len_2048") or {}
    if traced.get("lora_total_gb") is not None:
        return {**traced, "source": "traced"}
    return {**memory_7b.get("seq_len_2048", {}), "source": "analytic"}


def lower_beyond_spread(block: dict[str, Any] | None) -> bool:
    """The mean of per-seed differences is below zero by more than their standard deviation:
    a difference the seeds agree on, not one of the size of their disagreement."""
    if not block or block.get("mean") is None:
        return False
    return block["mean"] < 0 and block["mean"] + (block.get("std") or 0.0) < 0


def verdicts(claims: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`{claim: {"verdict": reproduces | partly | does not reproduce, "rule": ...}}`; a claim
    of several parts also has `checks`, the verdict of each part."""
    out: dict[str, dict[str, Any]] = {}

    plus = claims["loraplus"]
    same, best = _mean(plus["same_lr"]["speedup"]), _mean(plus["best_lr"]["speedup"])
    held = [x is not None and x >= 1.4 for x in (same, best)]
    some = [x is not None and x >= 1.1 for x in (same, best)]
    out["loraplus"] = {
        "verdict": "reproduces" if all(held) else "partly" if any(some) else "does not reproduce",
        "rule": "reproduces when LoRA+ reaches LoRA's final held-out loss at least 1.4x sooner "
        "both at the same learning rate and with each at its best; partly when it is at least "
        "1.1x sooner in one of the two",
    }

    dora = claims["dora"]
    loss = dora["quality"]["eval_loss_diff_pct"]
    em = dora["quality"]["exact_match_diff_pts"]
    params_pct = dora["overhead"].get("extra_parameters_pct_of_adapter")
    lower = lower_beyond_spread(loss)
    em_not_lower = em.get("mean") is None or em["mean"] + (em.get("std") or 0.0) >= 0
    quality = (
        "reproduces"
        if lower and loss["mean"] <= -1.0 and em_not_lower
        else "partly"
        if lower
        else "does not reproduce"
    )
    parameters = "reproduces" if params_pct is not None and params_pct < 5 else "does not reproduce"
    out["dora"] = {
        "verdict": quality
        if parameters == "reproduces"
        else "does not reproduce"
        if quality == "does not reproduce"
        else "partly",
        "checks": {"quality": quality, "parameters": parameters},
        "rule": "quality reproduces when DoRA's held-out loss is at least 1% lower than LoRA's "
        "on average, lower by more than the standard deviation of the per-seed differences, "
        "and exact match not lower by more than its; partly when the loss is lower beyond "
        "the spread but by less or exact match falls; parameters reproduce under 5% of "
        "LoRA's adapter; the claim takes the quality verdict, partly when the parameters fail",
    }

    qlora = claims["qlora"]
    est = headline_7b(qlora["memory_7b"])
    q_gb, l_gb = est.get("qlora_total_gb"), est.get("lora_total_gb")
    memory_7b = (
        "reproduces"
        if q_gb is not None and l_gb is not None and 4.5 <= q_gb <= 8 and 12 <= l_gb <= 20
        else "does not reproduce"
    )
    peak_ratio = (qlora.get("measured_small") or {}).get("peak_ratio")
    memory_small = (
        "reproduces" if peak_ratio is not None and peak_ratio <= 0.9 else "does not reproduce"
    )
    q_loss = _mean(qlora["quality"]["eval_loss_diff_pct"])
    q_em = _mean(qlora["quality"]["exact_match_diff_pts"])
    q_quality = (
        "reproduces"
        if q_loss is not None and abs(q_loss) <= 3 and abs(q_em or 0.0) <= 3
        else "does not reproduce"
    )
    checks = {"memory_7b": memory_7b, "memory_small": memory_small, "quality": q_quality}
    out["qlora"] = {
        "verdict": "reproduces"
        if all(v == "reproduces" for v in checks.values())
        else "partly"
        if any(v == "reproduces" for v in checks.values())
        else "does not reproduce",
        "checks": checks,
        "rule": "memory at 7B (modeled, not measured): the estimate lies in 4.5-8 GB for "
        "QLoRA and 12-20 GB for LoRA; memory measured on the small model: QLoRA's peak at "
        "least 10% under LoRA's; quality: held-out loss within 3% and exact match within 3 "
        "points of LoRA's; reproduces when all three hold, partly when some do",
    }

    lora = claims["lora"]
    gaps = [g for g in (lora.get("loss_gap_pct"), (lora.get("tuned") or {}).get("loss_gap_pct"))]
    known = [g for g in gaps if g is not None]
    worst = max(known) if known else None
    out["lora"] = {
        "verdict": "reproduces"
        if worst is not None and worst <= 5
        else "partly"
        if worst is not None and worst <= 15
        else "does not reproduce",
        "rule": "reproduces when LoRA's held-out loss is within 5% of the best variant's both "
        "at the same settings and with every learning rate the sweep tried (LoRA at its "
        "best rate against the best of any variant at any rate run on every seed); partly "
        "within 15%",
    }
    return out


# ---------------------------------------------------------------------------------------------
# The advisor's evidence file
# ---------------------------------------------------------------------------------------------


def _ms(block: dict[str, Any] | None, digits: int = 2) -> dict[str, float] | None:
    """mean and std, rounded; None when there is no figure."""
    if not block or block.get("mean") is None:
        return None
    return {"mean": round(block["mean"], digits), "std": round(block["std"], digits)}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def advisor_evidence(results: dict[str, Any]) -> dict[str, Any]:
    """The compact figures `advisor/evidence.py` reads and cites."""
    c = results["claims"]
    setup = results["setup"]
    v = results["verdicts"]
    verdict = {k: x["verdict"] for k, x in v.items()}
    small = c["qlora"].get("measured_small") or {}
    peak = small.get("peak_rss_growth_bytes") or {}
    picks = results.get("learning_rate_pick") or {}
    same_plus = c["qlora+loraplus"]["speed_vs_qlora"]
    tuned = c["lora"].get("tuned") or {}

    est = headline_7b(c["qlora"]["memory_7b"])
    return {
        "schema": 1,
        "source": "loracle's evidence benchmark (python -m bench evidence); tables and plots in "
        "BENCHMARKS.md",
        "date": results["machine"]["date"],
        "setup": {
            "model": setup["model_short"] + " pretrained on Python's standard library",
            "model_short": setup["model_short"],
            "task": setup["task"],
            "seeds": len(setup["seeds"]),
            "steps": setup["steps"],
            "device": "CPU" if setup["device"].startswith("CPU") else setup["device"],
        },
        "loraplus": {
            "speedup_same_lr": _ms(c["loraplus"]["same_lr"]["speedup"]),
            "speedup_best_lr": _ms(c["loraplus"]["best_lr"]["speedup"]),
            "reached_same_lr": f"{c['loraplus']['same_lr'].get('reached', 0)} of "
            f"{len(c['loraplus']['same_lr'].get('per_seed', []))}",
            "best_learning_rates": {
                "lora": results["best_learning_rate"].get("lora"),
                "loraplus": results["best_learning_rate"].get("loraplus"),
            },
            "best_learning_rates_picked_on": (picks.get("lora") or {}).get("picked_on"),
            "verdict": verdict["loraplus"],
        },
        "dora": {
            "eval_loss_diff_pct": _ms(c["dora"]["quality"]["eval_loss_diff_pct"], 1),
            "exact_match_diff_pts": _ms(c["dora"]["quality"]["exact_match_diff_pts"], 1),
            "extra_parameters_pct": round(
                c["dora"]["overhead"]["extra_parameters_pct_of_adapter"], 2
            ),
            "step_time_pct": _ms(c["dora"]["overhead"]["step_time_pct"], 0),
            "verdict": verdict["dora"],
            "checks": v["dora"].get("checks"),
        },
        "qlora": {
            "adapted_linears_ratio_16bit": _round(small.get("adapted_linears_ratio_16bit"), 3),
            "adapted_linears_ratio_small": _round(small.get("adapted_linears_ratio_as_run"), 3),
            "peak_ratio_small": _round(small.get("peak_ratio"), 3),
            "peak_mib_small": {k: _round(b / MIB, 1) for k, b in peak.items() if b},
            "weights_share_of_peak_small": _round(small.get("lora_weights_share_of_peak"), 3),
            "estimate_7b_gb": {
                "lora": est.get("lora_total_gb"),
                "qlora": est.get("qlora_total_gb"),
                "method": est.get("source"),
            },
            "eval_loss_diff_pct": _ms(c["qlora"]["quality"]["eval_loss_diff_pct"], 1),
            "exact_match_diff_pts": _ms(c["qlora"]["quality"]["exact_match_diff_pts"], 1),
            "step_time_pct": _ms(c["qlora"]["overhead"]["step_time_pct"], 0),
            "verdict": verdict["qlora"],
            "checks": v["qlora"].get("checks"),
        },
        "qlora+loraplus": {
            "speedup_vs_qlora": _ms(same_plus["speedup"]),
            "reached_vs_qlora": f"{same_plus.get('reached', 0)} of "
            f"{len(same_plus.get('per_seed', []))}",
            "speedup_vs_qlora_best_lr": _ms(
                c["qlora+loraplus"]["speed_vs_qlora_best_lr"]["speedup"]
            ),
        },
        "qlora+dora": {
            "eval_loss_diff_pct_vs_qlora": _ms(
                c["qlora+dora"]["quality_vs_qlora"]["eval_loss_diff_pct"], 1
            ),
            "exact_match_diff_pts_vs_qlora": _ms(
                c["qlora+dora"]["quality_vs_qlora"]["exact_match_diff_pts"], 1
            ),
        },
        "lora": {
            "loss_gap_pct": _round(c["lora"]["loss_gap_pct"], 1),
            "best_variant": c["lora"]["best_variant"],
            "tuned_loss_gap_pct": _round(tuned.get("loss_gap_pct"), 1),
            "tuned_best": {
                "variant": tuned["best"]["key"],
                "learning_rate": tuned["best"]["learning_rate"],
                "lora_learning_rate": tuned["lora_learning_rate"],
            }
            if tuned.get("best")
            else None,
            "verdict": verdict["lora"],
        },
    }


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _figure(width: float = 7, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_eval_loss(results: dict[str, Any], path: Path) -> None:
    """Held-out loss against optimizer step, every variant at the base learning rate (mean
    over seeds, band = min-max), plus LoRA and LoRA+ at their best learning rates."""
    runs, lr = results["runs"], results["setup"]["learning_rate"]
    figure = _figure(8, 5)
    axes = figure.add_subplot()
    for key, label in VARIANT_LABELS.items():
        curve = analysis.curves(runs, key, lr)
        if not curve["steps"]:
            continue
        (line,) = axes.plot(curve["steps"], curve["mean"], label=f"{label} (lr {lr:g})")
        axes.fill_between(
            curve["steps"], curve["min"], curve["max"], alpha=0.15, color=line.get_color()
        )
    for key, rate_of in (
        ("lora", "lora"),
        ("loraplus", "loraplus"),
        ("qlora", "lora"),
        ("qlora+loraplus", "loraplus"),
    ):
        best = results["best_learning_rate"].get(rate_of)
        curve = analysis.curves(runs, key, best) if best is not None else {"steps": []}
        if best is not None and abs(best - lr) > 1e-12 and curve["steps"]:
            axes.plot(
                curve["steps"],
                curve["mean"],
                linestyle="--",
                label=f"{VARIANT_LABELS[key]} ("
                + ("" if rate_of == key else f"{VARIANT_LABELS[rate_of]}'s ")
                + f"best lr {best:g})",
            )
    target = results["claims"]["loraplus"]["same_lr"].get("target_eval_loss")
    if target:
        axes.axhline(
            target,
            color="grey",
            linewidth=0.8,
            linestyle=":",
            label="target (LoRA's worst final loss)",
        )
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("held-out loss (nats per answer token)")
    axes.set_yscale("log")
    axes.set_title(
        f"{results['setup']['task_name']}: held-out loss, mean of "
        f"{len(results['setup']['seeds'])} seeds (band: min-max)"
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def plot_memory(results: dict[str, Any], path: Path) -> None:
    """Left: measured memory of each variant on the small model (tensor bytes of the weights,
    and the worker's peak RSS growth). Right: the analytic estimate for Llama-2-7B."""
    memory = results["memory"]
    keys = [k for k in VARIANT_LABELS if k in memory]
    figure = _figure(11, 4.5)
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    xs = range(len(keys))
    bars = {
        "frozen weights (tensor bytes)": [memory[k]["model_bytes"]["weights"] / MIB for k in keys],
        "of which adapted linear layers": [
            memory[k]["model_bytes"]["adapted_linears"] / MIB for k in keys
        ],
        "peak RSS growth (the worker's)": [
            (memory[k]["peak_memory"].get("rss_growth_bytes") or 0) / MIB for k in keys
        ],
    }
    for i, (label, values) in enumerate(bars.items()):
        left.bar([x + (i - 1) * 0.27 for x in xs], values, width=0.27, label=label)
    left.set_xticks(list(xs), [VARIANT_LABELS[k] for k in keys], rotation=20, fontsize=8)
    left.set_ylabel("MiB")
    left.set_yscale("log")
    left.set_ylim(top=max(max(v) for v in bars.values()) * 40)  # room for the legend
    left.set_title(f"measured, {results['setup']['model_short']} on CPU", fontsize=10)
    left.legend(fontsize=8)
    left.grid(alpha=0.3, axis="y")
    est = results["estimate_7b"]["seq_len_2048"]["per_variant"]
    ekeys = [k for k in VARIANT_LABELS if k in est]
    right.bar(
        range(len(ekeys)), [est[k]["total_gb"] for k in ekeys], color="tab:green", label="analytic"
    )
    traced = (results["estimate_7b"].get("traced_seq_len_2048") or {}).get("per_variant", {})
    tx = [i for i, k in enumerate(ekeys) if k in traced]
    if tx:
        right.scatter(
            tx,
            [traced[ekeys[i]]["total_gb"] for i in tx],
            color="black",
            zorder=3,
            label="traced (worker.memtrace)",
        )
    right.legend(fontsize=8, loc="upper center")
    right.axhline(16, color="grey", linestyle=":", linewidth=1)
    right.axhline(6, color="grey", linestyle=":", linewidth=1)
    right.text(len(ekeys) - 0.5, 16.3, "seed: ~16 GB", fontsize=8, ha="right")
    right.text(len(ekeys) - 0.5, 6.3, "seed: ~6 GB", fontsize=8, ha="right")
    right.set_xticks(range(len(ekeys)), [VARIANT_LABELS[k] for k in ekeys], rotation=20, fontsize=8)
    right.set_ylabel("GB (10^9 bytes) the card must have free")
    right.set_title("Llama-2-7B, seq 2048, bf16, gradient checkpointing", fontsize=10)
    right.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path)


# ---------------------------------------------------------------------------------------------
# BENCHMARKS.md
# ---------------------------------------------------------------------------------------------


def _pm(block: dict[str, Any] | None, fmt: str = "{:.2f}", unit: str = "") -> str:
    if not block or block.get("mean") is None:
        return "n/a"
    text = f"{fmt.format(block['mean'])}{unit} ± {fmt.replace('+', '').format(block['std'])}{unit}"
    if block.get("n", 0) > 1:
        text += f" ({fmt.format(block['min'])}..{fmt.format(block['max'])})"
    return text


def _above(block: dict[str, Any] | None, baseline: float | None) -> float | None:
    mean = _mean(block)
    return None if mean is None or baseline is None else mean - baseline


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def _speed(block: dict[str, Any]) -> str:
    s = block.get("speedup") or {}
    n = len(block.get("per_seed", []))
    reached = block.get("reached", n)
    if n and reached == 0:
        return f"never reached (0 of {n} seeds)"
    text = _pm(s, "{:.2f}", "x")
    if reached < n:
        text += f"; {n - reached} of {n} seeds never reached it"
    return text


CHECK_LABELS = {
    "quality": "quality",
    "parameters": "parameters under 5%",
    "memory_7b": "7B memory, modeled",
    "memory_small": "memory measured at this scale",
}
BUDGET_MINUTES = {"full": 30, "quick": 5}
"""The wall time each mode must stay under on 2 CPU cores."""


def _checks(verdict: dict[str, Any]) -> str:
    checks = verdict.get("checks")
    if not checks:
        return ""
    return " (" + "; ".join(f"{CHECK_LABELS.get(k, k)}: {x}" for k, x in checks.items()) + ")"


def _timing(results: dict[str, Any]) -> dict[str, Any]:
    return results.get("timing") or {}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} minutes"


def _budget(mode: str, seconds: float, cpus: int | None) -> str:
    budget = BUDGET_MINUTES.get(mode)
    if budget is None or cpus != 2:
        return ""
    side = "within" if seconds < budget * 60 else "over"
    return f", {side} its budget of {budget} minutes on 2 cores"


def timing_sentences(results: dict[str, Any]) -> list[str]:
    """How long this run and the recorded quick runs took: every figure from the records."""
    t = _timing(results)
    cpus = results["machine"].get("cpus")
    base = results["base"]
    out = []
    if t.get("total_seconds") is not None:
        cpu = t.get("cpu_seconds")
        # The budget is for a run that builds its base: a cached base's recorded build
        # time is added back before comparing.
        cold = t["total_seconds"]
        if t.get("base_cached"):
            how = "with the base model from the cache"
            if base.get("build_seconds"):
                cold += base["build_seconds"]
                how += (
                    f"; with the base's build added ({_minutes(base['build_seconds'])} when it "
                    f"was built) it comes to {_minutes(cold)}"
                )
        else:
            how = "building the base model in the run"
            if t.get("base_seconds") is not None:
                how += f" ({_minutes(t['base_seconds'])} of it)"
        load = t.get("load_average_at_start")
        busy = (
            f"; the machine was already busy when it began (load average {load[0]:.1f})"
            if load and cpus and load[0] >= 0.5 * cpus
            else ""
        )
        out.append(
            f"This run took {_minutes(t['total_seconds'])} of wall time"
            + (f" ({cpu / 60:.0f} CPU-minutes)" if cpu else "")
            + f", {how}{_budget(results['mode'], cold, cpus)}{busy}."
        )
    quick = results.get("quick_timings") or {}
    parts = []
    for key, label in (("cold", "building its base in the run"), ("warm", "with its base cached")):
        q = quick.get(key)
        if q:
            base_part = (
                f"; {_minutes(q['base_seconds'])} of it for the base" if key == "cold" else ""
            )
            parts.append(
                f"{_minutes(q['total_seconds'])} {label} ({q['date'][:10]}, {q['cpus']} cores"
                f"{base_part}{_budget('quick', q['total_seconds'], q['cpus'])})"
            )
    if parts:
        out.append(
            "`--quick` runs the same pipeline smaller (a smaller base, fewer steps, seeds and "
            "learning rates) and publishes nothing; as recorded in "
            "`bench/results/evidence-quick.json` it took " + " and ".join(parts) + "."
        )
    else:
        out.append(
            "`--quick` runs the same pipeline smaller and publishes nothing; no quick run has "
            "recorded its time yet."
        )
    return out


def task_learned(results: dict[str, Any]) -> str:
    """Whether fine-tuning taught the task beyond the frequency of each answer: LoRA's exact
    match against answering every expression with its kind's most common answer."""
    majority = (results["setup"].get("majority_by_kind") or {}).get("all")
    lora = (results["per_variant"].get("lora") or {}).get("exact_match") or {}
    if majority is None or lora.get("mean") is None:
        return ""
    above = lora["mean"] - majority
    best_key = max(
        results["per_variant"],
        key=lambda k: results["per_variant"][k]["exact_match"]["mean"] or 0.0,
    )
    best = results["per_variant"][best_key]["exact_match"]["mean"]
    text = (
        f"**Is the task learned?** Exact match above the answer-frequency baseline (answering "
        f"every expression with its kind's most common answer: {majority:.3f}): LoRA "
        f"{above:+.3f}, the best variant ({VARIANT_LABELS.get(best_key, best_key)}) "
        f"{best - majority:+.3f}. "
    )
    if best - majority <= 0.02:
        text += (
            "No variant beats it by more than 2 points: at this scale fine-tuning mostly "
            "learned how often each answer comes, not how to read the expressions, so the "
            "verdicts below rest on held-out loss (the probability given to the right answer) "
            "and say little about exact-match quality."
        )
    else:
        text += "Fine-tuning learned more than how often each answer comes."
    return text


def sweep_sentence(results: dict[str, Any]) -> str:
    """How the best learning rates were picked, and a warning for a pick at the sweep's edge."""
    s = results["setup"]
    picks = results.get("learning_rate_pick") or {}
    finalists = s.get("finalists")
    text = (
        f"LoRA and LoRA+ at {', '.join(f'{lr:g}' for lr in s['sweep'])} on seed {s['seeds'][0]}"
        + (
            f"; each one's {'best rate' if finalists == 1 else f'{finalists} best rates'} "
            "there (lowest final held-out loss) besides the base rate also on the other seeds"
            if finalists
            else ""
        )
        + ". Best rate: "
    )
    chosen = []
    warnings = []
    for key in ("lora", "loraplus"):
        pick = picks.get(key) or {}
        lr = results["best_learning_rate"].get(key)
        if lr is None:
            continue
        chosen.append(
            f"{VARIANT_LABELS[key]} {lr:g}"
            + (f" (picked on the {pick['picked_on']})" if pick.get("picked_on") else "")
        )
        if pick.get("edge"):
            beyond = "higher" if pick["edge"] == "highest" else "lower"
            warnings.append(
                f"**{VARIANT_LABELS[key]}'s best rate is the {pick['edge']} of the sweep**: a "
                f"{beyond} one may be better still, and its figures at its best rate may "
                "understate it"
            )
    text += ", ".join(chosen) + "; QLoRA and QLoRA + LoRA+ ran at those rates on every seed."
    if warnings:
        text += " " + "; ".join(warnings) + "."
    return text


def small_memory_sentence(results: dict[str, Any]) -> str:
    """What the measured peaks on the small model say about QLoRA's saving, and why."""
    small = results["claims"]["qlora"].get("measured_small") or {}
    ratio, share = small.get("peak_ratio"), small.get("lora_weights_share_of_peak")
    if ratio is None:
        return ""
    peak = small["peak_rss_growth_bytes"]
    text = (
        f"QLoRA's peak was {ratio:.2f}x LoRA's ({peak['qlora'] / MIB:.1f} MiB against "
        f"{peak['lora'] / MIB:.1f} MiB): "
    )
    text += (
        "a saving at this scale."
        if ratio <= 0.9
        else "no saving at this scale."
        if ratio >= 0.97
        else "a small saving at this scale."
    )
    if share is not None and ratio > 0.9:
        text += (
            f" LoRA's frozen weights ({small['lora_weights_bytes'] / MIB:.1f} MiB in fp32) are "
            f"{100 * share:.0f}% of its peak"
            + (
                ": the rest is activations, the logits, the adapters' optimizer state and "
                "memory the allocator holds on to, which the resident set counts too, so "
                "shrinking the weights barely moves it."
                if share < 0.25
                else "."
            )
        )
    lora_bytes = (results["memory"].get("lora") or {}).get("model_bytes") or {}
    if lora_bytes.get("weights") and lora_bytes.get("adapted_linears") is not None:
        kept = 1 - lora_bytes["adapted_linears"] / lora_bytes["weights"]
        text += (
            f" The layers QLoRA leaves unquantized (embeddings, output head, norms) are "
            f"{100 * kept:.0f}% of the frozen weights."
        )
    return text


def markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    s, c, v, m = results["setup"], results["claims"], results["verdicts"], results["machine"]
    base = results["base"]
    lines: list[str] = []
    add = lines.append
    add("# Benchmarks: do the design document's claims hold on real training?")
    add("")
    add(
        "loracle's advice cites four published claims. This file tests them by fine-tuning one "
        "small pretrained model with every variant, through the worker's own training code "
        "(`worker.training.run_training`), and publishes what came out, including where a "
        "claim does not reproduce at this scale. The advisor cites these figures next to the "
        "papers' (`advisor/data/evidence.json`, written by the same run)."
    )
    add("")
    add("Reproduce with the command below. " + " ".join(timing_sentences(results)))
    add("")
    add("```sh")
    add(s["command"])
    add("```")
    add("")
    add(
        f"Measured {m['date']} on {m['cpus']} CPU cores ({m['platform']}), Python "
        f"{m['python']}, "
        + ", ".join(f"{k} {val}" for k, val in s["versions"].items() if k != "python")
        + "."
    )
    add("")
    add("## Verdicts")
    add("")
    learned = task_learned(results)
    if learned:
        add(learned)
        add("")
    add("| claim (design document) | loracle measured | verdict |")
    add("|---|---|---|")
    plus = c["loraplus"]
    add(
        f"| LoRA+: reaches the target quality roughly 1.5-2x faster | "
        f"{_speed(plus['same_lr'])} at the same learning rate; {_speed(plus['best_lr'])} at "
        f"each one's best | **{v['loraplus']['verdict']}** |"
    )
    dq, do = c["dora"]["quality"], c["dora"]["overhead"]
    add(
        f"| DoRA: quality a few percent higher, under 5% more parameters | held-out loss "
        f"{_pm(dq['eval_loss_diff_pct'], '{:+.1f}', '%')}, exact match "
        f"{_pm(dq['exact_match_diff_pts'], '{:+.1f}', ' pts')} vs LoRA; "
        f"+{do['extra_parameters_pct_of_adapter']:.2f}% parameters | "
        f"**{v['dora']['verdict']}**{_checks(v['dora'])} |"
    )
    q = c["qlora"]
    est = headline_7b(q["memory_7b"])
    small = q.get("measured_small") or {}
    peak = small.get("peak_rss_growth_bytes") or {}
    measured_peak = (
        f"measured on the {s['model_short']} model: peak {peak['qlora'] / MIB:.0f} MiB vs "
        f"{peak['lora'] / MIB:.0f} MiB ({small['peak_ratio']:.2f}x); "
        if peak.get("lora") and peak.get("qlora")
        else ""
    )
    add(
        f"| QLoRA: 7B in about 6 GB instead of about 16 GB, quality almost untouched | "
        f"7B ({est['source']} estimate, not a measurement; seq 2048) "
        f"{est['qlora_total_gb']:.1f} GB vs {est['lora_total_gb']:.1f} GB; {measured_peak}"
        f"held-out loss {_pm(q['quality']['eval_loss_diff_pct'], '{:+.1f}', '%')}, exact match "
        f"{_pm(q['quality']['exact_match_diff_pts'], '{:+.1f}', ' pts')} vs LoRA | "
        f"**{v['qlora']['verdict']}**{_checks(v['qlora'])} |"
    )
    lo = c["lora"]
    tuned = lo.get("tuned") or {}
    tuned_text = (
        f"; at its best rate ({tuned['lora_learning_rate']:g}) "
        f"{tuned['loss_gap_pct']:+.1f}% against the best of any variant at any rate "
        f"({VARIANT_LABELS[tuned['best']['key']]} at {tuned['best']['learning_rate']:g}, "
        f"{tuned['best']['eval_loss']:.3f})"
        if tuned.get("best")
        else ""
    )
    add(
        f"| LoRA works well for most jobs | held-out loss {_pm(lo['eval_loss'], '{:.3f}')}, "
        f"{_num(lo['loss_gap_pct'], '{:+.1f}')}% against the best variant at the same settings "
        f"({VARIANT_LABELS[lo['best_variant']]}, {_pm(lo['best_eval_loss'], '{:.3f}')})"
        f"{tuned_text}; from {_pm(lo['base_eval_loss'], '{:.2f}')} before fine-tuning | "
        f"**{v['lora']['verdict']}** |"
    )
    add("")
    add("Rules: " + "; ".join(f"{VARIANT_LABELS[k]}: {x['rule']}" for k, x in v.items()) + ".")
    add("")
    add(
        "Figures are mean ± sample standard deviation over seeds (min..max in brackets). A seed "
        "sets the adapter initialization and the data order; two variants with the same seed "
        "see the same batches, so ratios and differences are taken per seed."
    )
    add("")
    add("## Setup")
    add("")
    hl = base["held_out_loss"]
    add(
        f"- **Base model**: {s['model']}: {base['parameters']:,} parameters "
        f"(hidden {base['spec']['hidden_size']}, {base['spec']['num_hidden_layers']} layers, "
        f"vocabulary {base['spec']['vocab_size']}), pretrained from scratch with transformers' "
        f"Trainer for {base['spec']['steps']} steps ({base['corpus']['tokens_seen']:,} tokens) "
        f"on the .py files of Python {s['versions']['python']}'s standard library "
        f"({base['corpus']['train_files']} files, {base['corpus']['train_tokens']:,} tokens; "
        f"{base['corpus']['held_out_files']} files held out). Held-out loss "
        f"{hl['pretrained']:.2f} nats/token against {hl['unigram_entropy']:.2f} for token "
        f"frequencies alone and {hl['random_init']:.2f} at initialization"
        + (
            ": it has learned Python beyond token counts"
            if hl["pretrained"] < hl["unigram_entropy"]
            else ": this base has not learned more than token counts"
        )
        + f". Cached as `{base['key']}` in the benchmark's cache (`~/.cache/loracle/bench`, "
        "or `$LORACLE_BENCH_CACHE`), rebuilt "
        f"deterministically from seed {base['spec']['seed']} (weights sha256 "
        f"`{base['weights_sha256'][:16]}`)."
    )
    add(
        f"- **Task**: {s['task']} {s['train_rows']:,} training rows, {s['eval_rows']} held-out "
        "rows (no held-out expression occurs in training). Examples: "
        + "; ".join(f"`{e['prompt'].strip()}` → `{e['completion']}`" for e in s["examples"][:4])
        + f". Before fine-tuning the base gets {_pm(lo['base_exact_match'], '{:.3f}')} of them "
        "exactly right."
        + (
            f" Answering every expression with its kind's most common answer would get "
            f"{s['majority_by_kind']['all']:.3f} right (the answer-frequency baseline): only "
            "where a model beats it (see the table by kind) has it learned to read the "
            "expressions rather than how often each answer comes."
            if s.get("majority_by_kind", {}).get("all") is not None
            else ""
        )
    )
    add(
        "- **Metrics**: held-out loss (mean cross-entropy per answer token, eos included); "
        "exact match (every answer token is the most likely one given the true prefix, which "
        "is the same as greedy decoding printing the exact answer and stopping); evaluated "
        f"every {s['eval_every']} steps by a hook on the worker's run."
    )
    add(
        f"- **Training**: {s['steps']} optimizer steps of {s['batch_size']} rows, rank "
        f"{s['lora_rank']} adapters on every linear layer (alpha {2 * s['lora_rank']}), dropout "
        f"0, AdamW, cosine schedule with 3% warmup (the advisor's suggestion), fp32 on CPU; "
        f"base learning rate {s['learning_rate']:g}, LoRA+ ratio 16. QLoRA stores the base's "
        "linear layers in NF4 with double quantization (bitsandbytes on CPU). Seeds "
        f"{', '.join(map(str, s['seeds']))}."
    )
    add("- **Learning-rate sweep**: " + sweep_sentence(results))
    add("")
    add(f"![held-out loss against step]({plots['eval_loss']})")
    add("")
    add("## LoRA+: steps to the target held-out loss")
    add("")
    add(
        "Target: the worst final held-out loss among LoRA's seeds (so every LoRA run reaches "
        "it); steps interpolated between evaluations."
    )
    add("")
    add("| comparison | learning rates | target loss | LoRA steps | LoRA+ steps | speedup |")
    add("|---|---|---|---|---|---|")
    for name, block, lrs in (
        ("same learning rate", plus["same_lr"], f"{s['learning_rate']:g} / {s['learning_rate']:g}"),
        (
            "each at its best",
            plus["best_lr"],
            f"{plus['best_lr']['lora_learning_rate']:g} / "
            f"{plus['best_lr']['loraplus_learning_rate']:g}",
        ),
    ):
        add(
            f"| {name} | {lrs} | {_num(block['target_eval_loss'], '{:.3f}')} | "
            f"{_pm(block['baseline_steps'], '{:.0f}')} | {_pm(block['steps'], '{:.0f}')} | "
            f"{_speed(block)} |"
        )
    qp = c["qlora+loraplus"]["speed_vs_qlora"]
    add(
        f"| QLoRA + LoRA+ vs QLoRA, same rate | {s['learning_rate']:g} | "
        f"{_num(qp['target_eval_loss'], '{:.3f}')} | "
        f"{_pm(qp['baseline_steps'], '{:.0f}')} (QLoRA) | "
        f"{_pm(qp['steps'], '{:.0f}')} | {_speed(qp)} |"
    )
    qb = c["qlora+loraplus"]["speed_vs_qlora_best_lr"]
    if qb.get("per_seed"):
        add(
            "| QLoRA + LoRA+ vs QLoRA, each at its best | "
            f"{_num(qb['qlora_learning_rate'], '{:g}')} / {_num(qb['learning_rate'], '{:g}')} | "
            f"{_num(qb['target_eval_loss'], '{:.3f}')} | "
            f"{_pm(qb['baseline_steps'], '{:.0f}')} (QLoRA) | {_pm(qb['steps'], '{:.0f}')} | "
            f"{_speed(qb)} |"
        )
    add("")
    add(
        "Best rates are LoRA's and LoRA+'s from the sweep, used for QLoRA and QLoRA + LoRA+ "
        "alike. Final held-out figures, LoRA vs LoRA+ at their best rates: loss "
        f"{_pm(plus['quality_best_lr']['baseline']['eval_loss'], '{:.3f}')} vs "
        f"{_pm(plus['quality_best_lr']['variant']['eval_loss'], '{:.3f}')}, exact match "
        f"{_pm(plus['quality_best_lr']['baseline']['exact_match'], '{:.3f}')} vs "
        f"{_pm(plus['quality_best_lr']['variant']['exact_match'], '{:.3f}')}."
    )
    add("")
    sweep = results["sweep_table"]
    first, n = s["seeds"][0], len(s["seeds"])
    add(
        f"Sweep: final held-out loss / exact match on seed {first}, and the mean held-out loss "
        f"over all {n} seeds where the rate ran on every seed (the pick is the lowest mean; "
        "marked *):"
    )
    add("")
    add(
        "| learning rate | "
        + " | ".join(
            f"{VARIANT_LABELS[k]}, seed {first} | {VARIANT_LABELS[k]}, mean" for k in sweep
        )
        + " |"
    )
    add("|---|" + "---|---|" * len(sweep))
    for lr in s["sweep"]:
        cells = []
        for key in sweep:
            cell = sweep[key].get(f"{lr:g}") or {}
            one = cell.get(f"seed {first}")
            mean = cell.get(f"mean of {n} seeds")
            best = results["best_learning_rate"].get(key)
            mark = "*" if best is not None and abs(best - lr) <= 1e-12 * lr else ""
            cells.append(f"{one['eval_loss']:.3f} / {one['exact_match']:.3f}" if one else "")
            cells.append(f"{_pm(mean['eval_loss'], '{:.3f}')}{mark}" if mean else "")
        add(f"| {lr:g} | " + " | ".join(cells) + " |")
    add("")
    add("## Quality at equal steps, parameters and step time")
    add("")
    add("Every variant at the base learning rate, after the same number of steps.")
    add("")
    majority_all = (s.get("majority_by_kind") or {}).get("all")
    add(
        "| variant | held-out loss | exact match | exact match above the answer-frequency "
        "baseline | token accuracy | trainable parameters | median step, CPU s (wall s) |"
    )
    add("|---|---|---|---|---|---|---|")
    for key, label in VARIANT_LABELS.items():
        row = results["per_variant"].get(key)
        if not row:
            continue
        add(
            f"| {label} | {_pm(row['eval_loss'], '{:.3f}')} | {_pm(row['exact_match'], '{:.3f}')} "
            f"| {_num(_above(row['exact_match'], majority_all), '{:+.3f}')} "
            f"| {_pm(row['token_accuracy'], '{:.3f}')} | {row['trainable_parameters']:,} | "
            f"{_pm(row['median_step_cpu_seconds'], '{:.3f}')} "
            f"({_num(_mean(row['median_step_seconds']), '{:.3f}')}) |"
        )
    add("")
    kinds = sorted(
        {k for r in results["runs"] for k in analysis.final(r).get("exact_match_by_kind", {})}
    )
    if kinds:
        add(
            "Exact match by kind of expression (mean over seeds, base learning rate; step 0 is "
            "the base model before fine-tuning). The first row is what answering every "
            "expression of a kind with that kind's most common answer would score: where a "
            "variant scores about that, it has learned how often each answer comes, not how to "
            "read the expression:"
        )
        add("")
        add("| variant | " + " | ".join(kinds) + " |")
        add("|---|" + "---|" * len(kinds))
        lora_runs = analysis.select(results["runs"], "lora", s["learning_rate"])
        majority = s.get("majority_by_kind")
        if majority:
            add(
                "| always the kind's most common answer | "
                + " | ".join(f"{majority.get(k, 0.0):.2f}" for k in kinds)
                + " |"
            )
        rows = [("base (step 0)", [r["evals"][0] for r in lora_runs])]
        rows += [
            (
                label,
                [
                    analysis.final(r)
                    for r in analysis.select(results["runs"], key, s["learning_rate"])
                ],
            )
            for key, label in VARIANT_LABELS.items()
        ]
        for label, points in rows:
            if points:
                cells = [
                    sum(p["exact_match_by_kind"].get(k, 0.0) for p in points) / len(points)
                    for k in kinds
                ]
                add(f"| {label} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
        add("")
    add("| comparison | held-out loss | exact match | extra parameters | step time |")
    add("|---|---|---|---|---|")
    for name, quality, over in (
        ("DoRA vs LoRA", dq, do),
        ("QLoRA vs LoRA", q["quality"], q["overhead"]),
        (
            "QLoRA + DoRA vs QLoRA",
            c["qlora+dora"]["quality_vs_qlora"],
            c["qlora+dora"]["overhead_vs_qlora"],
        ),
        ("QLoRA + DoRA vs LoRA", c["qlora+dora"]["quality_vs_lora"], None),
        ("QLoRA + LoRA+ vs LoRA", c["qlora+loraplus"]["quality_vs_lora"], None),
    ):
        params = (
            f"{over['extra_parameters']:+,} ({over['extra_parameters_pct_of_adapter']:+.2f}% "
            f"of the adapter, {over['extra_parameters_pct_of_model']:+.3f}% of the model)"
            if over
            else ""
        )
        step = _pm(over["step_time_pct"], "{:+.0f}", "%") if over else ""
        add(
            f"| {name} | {_pm(quality['eval_loss_diff_pct'], '{:+.1f}', '%')} | "
            f"{_pm(quality['exact_match_diff_pts'], '{:+.1f}', ' pts')} | {params} | {step} |"
        )
    add("")
    add(
        "Step times are medians over each run's steps (evaluation excluded) of the process's "
        "CPU time, both threads together, which other jobs on a shared machine inflate far "
        "less than the wall clock (given in brackets); the overheads compare CPU times. Read "
        "them as rough. On CPU, bitsandbytes' NF4 matmuls "
        "dequantize in software; a CUDA card's kernels cost far less."
    )
    add("")
    add("## QLoRA: memory")
    add("")
    add(
        "| variant | frozen weights (MiB) | of which adapted linear layers (MiB) | adapter (MiB) "
        "| peak RSS growth of the run (MiB) | base's held-out loss as stored |"
    )
    add("|---|---|---|---|---|---|")
    for key, label in VARIANT_LABELS.items():
        mem = results["memory"].get(key)
        if not mem:
            continue
        mb = mem["model_bytes"]
        rss = mem["peak_memory"].get("rss_growth_bytes")
        add(
            f"| {label} | {mb['weights'] / MIB:.2f} | {mb['adapted_linears'] / MIB:.2f} | "
            f"{mb['trainable'] / MIB:.2f} | {_num(rss and rss / MIB, '{:.0f}')} | "
            f"{_num(mem.get('base_lm_loss'), '{:.3f}')} |"
        )
    add("")
    add(
        "Weights are the bytes of the model's frozen tensors as the worker builds them (NF4 "
        "packing and quantization statistics included); the peak is the worker's own "
        "measurement (growth of the process's resident memory during `run_training`, each "
        "variant in a fresh process). " + small_memory_sentence(results)
    )
    add("")
    add(
        "Llama-2-7B: the memory the card must have free (bf16, micro batch 1, gradient "
        "checkpointing, AdamW, rank 16 on all linear layers), from the advisor's analytic "
        "model and, where it ran, the worker's tracer (two real training steps of the worker's "
        "model on PyTorch's meta device):"
    )
    add("")
    traced = results["estimate_7b"].get("traced_seq_len_2048") or {}
    add("| variant | analytic, seq 512 | analytic, seq 2048 | traced, seq 2048 |")
    add("|---|---|---|---|")
    e512, e2048 = results["estimate_7b"]["seq_len_512"], results["estimate_7b"]["seq_len_2048"]
    for key, label in VARIANT_LABELS.items():
        a, b = e512["per_variant"].get(key), e2048["per_variant"].get(key)
        t = traced.get("per_variant", {}).get(key)
        if a and b:
            add(
                f"| {label} | {a['total_gb']:.1f} GB ({a['total_gib']:.1f} GiB) | "
                f"{b['total_gb']:.1f} GB ({b['total_gib']:.1f} GiB) | "
                + (f"{t['total_gb']:.1f} GB ({t['total_gib']:.1f} GiB)" if t else "")
                + " |"
            )
    add("")
    add(f"Analytic: {results['estimate_7b']['method']}.")
    if traced.get("error"):
        add(f"The tracer gave no answer on this run ({traced['error']}).")
    add("")
    add(f"![memory per variant]({plots['memory']})")
    add("")
    add("## What reproduces, what does not, and why that may be")
    add("")
    for line in results["discussion"]:
        add(f"- {line}")
    add("")
    return "\n".join(lines) + "\n"


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _headline(name: str, verdict: dict[str, Any]) -> str:
    """'DoRA (partly; quality: ..., parameters under 5%: ...)'."""
    checks = verdict.get("checks") or {}
    parts = "".join(f"; {CHECK_LABELS.get(k, k)}: {x}" for k, x in checks.items())
    return f"{name} ({verdict['verdict']}{parts})"


def _relative(a: float | None, b: float | None, tolerance: float = 0.01) -> str | None:
    """'lower', 'higher' or 'about level': `a` against `b`, within a relative tolerance."""
    if a is None or b is None:
        return None
    if a < b * (1 - tolerance):
        return "lower"
    if a > b * (1 + tolerance):
        return "higher"
    return "about level"


def _loraplus_paragraph(results: dict[str, Any]) -> str:
    claims, verdicts, base = results["claims"], results["verdicts"], results["base"]
    plus = claims["loraplus"]
    same_block, best_block = plus["same_lr"], plus["best_lr"]
    q_same, q_best = plus["quality_same_lr"], plus["quality_best_lr"]
    base_lr = same_block["learning_rate"]
    lora_lr, plus_lr = best_block["lora_learning_rate"], best_block["loraplus_learning_rate"]
    lora_same, plus_same = (_mean(q_same[k]["eval_loss"]) for k in ("baseline", "variant"))
    lora_best, plus_best = (_mean(q_best[k]["eval_loss"]) for k in ("baseline", "variant"))
    speed_same = _mean(same_block.get("speedup"))
    speed_best = _mean(best_block.get("speedup"))

    where = (
        ", where LoRA ends within 2% of its loss at its best rate"
        if lora_same is not None and lora_best is not None and lora_same <= lora_best * 1.02
        else ""
    )
    if same_block.get("reached", 0) == 0 and same_block.get("per_seed"):
        at_same = f"At the same base learning rate ({base_lr:g}{where}) LoRA+ never reached "
        at_same += "LoRA's final loss"
    else:
        at_same = (
            f"At the same base learning rate ({base_lr:g}{where}) LoRA+ reached LoRA's final "
            f"loss with a speed-up of {_speed(same_block)}"
        )
    at_same += (
        f", and ended at {_pm(q_same['variant']['eval_loss'], '{:.3f}')} against LoRA's "
        f"{_pm(q_same['baseline']['eval_loss'], '{:.3f}')}."
    )
    if plus_lr is not None and plus_same is not None and plus_best is not None:
        if plus_lr < base_lr and plus_best < plus_same:
            at_same += (
                f" LoRA+ did better at a lower rate (its best, {plus_lr:g}): at {base_lr:g} "
                "B's rate, 16x that, is too high for it."
            )
        elif plus_lr > base_lr and plus_best < plus_same:
            at_same += f" LoRA+ did better at a higher rate (its best, {plus_lr:g})."

    ended = _relative(plus_best, lora_best)
    at_best = (
        f"With each at its best rate from the sweep (LoRA {_num(lora_lr, '{:g}')}, LoRA+ "
        f"{_num(plus_lr, '{:g}')}) LoRA+ reached LoRA's final loss with a speed-up of "
        f"{_speed(best_block)}, against the claimed 1.5-2x"
        + (
            f", and ended {ended} ({_pm(q_best['variant']['eval_loss'], '{:.3f}')} against "
            f"{_pm(q_best['baseline']['eval_loss'], '{:.3f}')}; exact match "
            f"{_pm(q_best['exact_match_diff_pts'], '{:+.1f}', ' pts')})"
            if ended
            else ""
        )
        + "."
    )

    helps_best = speed_best is not None and speed_best >= 1.1
    helps_same = speed_same is not None and speed_same >= 1.1
    worse_same = plus_same is not None and lora_same is not None and plus_same > lora_same
    rate = (
        None
        if plus_lr is None or lora_lr is None
        else "lower"
        if plus_lr < lora_lr
        else "higher"
        if plus_lr > lora_lr
        else "same"
    )
    if helps_best and helps_same:
        summary = "LoRA+ sped training up by at least 1.1x both at LoRA's rate and at its own."
    elif helps_best:
        summary = f"So the speed-up needs LoRA+'s own{f', {rate}' if rate else ''} learning rate"
        summary += "; reused at LoRA's rate LoRA+ ends worse than LoRA." if worse_same else "."
    elif helps_same:
        summary = "LoRA+ sped training up at LoRA's rate, but not with each at its best."
    else:
        summary = "LoRA+ did not speed training up by 1.1x or more at either rate."

    picks = results.get("learning_rate_pick") or {}
    edges = [
        f"{VARIANT_LABELS[k]}'s best rate is the {p['edge']} the sweep tried, so a rate beyond "
        "it may change these figures"
        for k, p in picks.items()
        if p.get("edge")
    ]
    params = base["parameters"]
    return (
        f"{_headline('LoRA+', verdicts['loraplus'])}: {at_same} {at_best} {summary} "
        + ("; ".join(edges) + ". " if edges else "")
        + "Hayou et al. tune the rate for each method too, on models of hundreds of millions "
        f"of parameters and more; at hidden size {base['spec']['hidden_size']} "
        f"({params / 1e6:.1f}M parameters) ratio 16 was not tuned for this width, and a cosine "
        "schedule over a short budget slows every variant's last steps, which can shorten "
        "any lead."
    )


def _dora_paragraph(results: dict[str, Any]) -> str:
    claims, verdicts, base = results["claims"], results["verdicts"], results["base"]
    dq, do = claims["dora"]["quality"], claims["dora"]["overhead"]
    loss = dq["eval_loss_diff_pct"]
    if lower_beyond_spread(loss):
        spread_text = "DoRA's loss is lower by more than the spread of the per-seed differences."
    elif loss.get("mean") is not None:
        spread_text = (
            f"The per-seed differences spread by {loss['std']:.1f}% (standard deviation), as "
            f"much as or more than their mean ({loss['mean']:+.1f}%): this run cannot tell "
            "DoRA's quality from LoRA's."
        )
    else:
        spread_text = ""
    share = 100 * do["baseline_trainable_parameters"] / base["parameters"]
    capacity = (
        f" Here rank-16 adapters are {share:.0f}% of the model's size, against well under 1% "
        "for a 7B model at rank 16, so rank is less likely to limit LoRA here."
        if share >= 5
        else f" Here rank-16 adapters are {share:.1f}% of the model's size."
    )
    return (
        f"{_headline('DoRA', verdicts['dora'])}: held-out loss "
        f"{_pm(loss, '{:+.1f}', '%')} and exact match "
        f"{_pm(dq['exact_match_diff_pts'], '{:+.1f}', ' pts')} against LoRA, for "
        f"{do['extra_parameters_pct_of_adapter']:+.1f}% parameters (the magnitude vectors: one "
        "value per output feature, about 1/(2 x rank) of a square layer's adapter) and "
        f"{_pm(do['step_time_pct'], '{:+.0f}', '%')} CPU time per step. {spread_text} Liu et "
        "al. report 1-4 points on commonsense reasoning for 7B-13B models, largest at low "
        f"ranks where LoRA lacks capacity.{capacity}"
    )


def _qlora_paragraph(results: dict[str, Any]) -> str:
    claims, verdicts, memory = results["claims"], results["verdicts"], results["memory"]
    qlora = claims["qlora"]
    base_loss = {k: (memory.get(k) or {}).get("base_lm_loss") for k in ("lora", "qlora")}
    nf4 = ""
    if base_loss["lora"] and base_loss["qlora"]:
        cost = 100 * (base_loss["qlora"] / base_loss["lora"] - 1)
        figures = (
            f"its held-out loss on the standard library is {base_loss['qlora']:.3f} nats/token "
            f"in NF4 against {base_loss['lora']:.3f} in fp32 ({cost:+.1f}%)"
        )
        nf4 = (
            f" NF4 itself costs the pretrained model little: {figures}."
            if cost <= 2
            else f" NF4 itself costs the pretrained model: {figures}."
        )
    est = headline_7b(qlora["memory_7b"])
    small = qlora.get("measured_small") or {}
    shrink = (
        f" NF4 shrinks the adapted linear layers to {small['adapted_linears_ratio_as_run']:.2f}x "
        f"their bytes in this run's fp32 and to {small['adapted_linears_ratio_16bit']:.2f}x "
        "their bytes in 16 bits, as a GPU run keeps them."
        if small.get("adapted_linears_ratio_as_run") and small.get("adapted_linears_ratio_16bit")
        else ""
    )
    return (
        f"{_headline('QLoRA', verdicts['qlora'])}: for a 7B model "
        f"the {est['source']} estimate (a model of memory, not a measurement) is "
        f"{_num(est.get('qlora_total_gb'), '{:.1f}')} GB against "
        f"{_num(est.get('lora_total_gb'), '{:.1f}')} GB, the seed's 6 against 16. Quality: "
        f"held-out loss {_pm(qlora['quality']['eval_loss_diff_pct'], '{:+.1f}', '%')}, exact "
        f"match {_pm(qlora['quality']['exact_match_diff_pts'], '{:+.1f}', ' pts')} against "
        f"LoRA.{nf4} Measured on this model: {small_memory_sentence(results)}{shrink} The 7B "
        "figure is therefore the advisor's memory model (checked against published "
        "measurements) and, where it ran, the worker's tracer, not a run on a GPU."
    )


def _lora_paragraph(results: dict[str, Any]) -> str:
    lora, verdict = results["claims"]["lora"], results["verdicts"]["lora"]
    tuned = lora.get("tuned") or {}
    text = (
        f"{_headline('LoRA', verdict)}: at the same settings plain LoRA's held-out loss was "
        f"{_num(lora.get('loss_gap_pct'), '{:+.1f}%')} against the best variant's "
        f"({VARIANT_LABELS.get(lora['best_variant'], lora['best_variant'])})"
    )
    if tuned.get("best"):
        best = tuned["best"]
        text += (
            f"; at its best rate ({tuned['lora_learning_rate']:g}) it was "
            f"{tuned['loss_gap_pct']:+.1f}% against the best of every variant at every rate "
            f"run on all seeds ({VARIANT_LABELS.get(best['key'], best['key'])} at "
            f"{best['learning_rate']:g}, {best['eval_loss']:.3f})."
        )
        clearly = tuned.get("clearly_better") or []
        if clearly:
            text += (
                " More than 5% lower than LoRA's at its best rate: "
                + ", ".join(
                    f"{VARIANT_LABELS.get(x['key'], x['key'])} at {x['learning_rate']:g} "
                    f"({x['eval_loss']:.3f}, LoRA {x['lora_gap_pct']:+.1f}%)"
                    for x in clearly
                )
                + "."
            )
        else:
            text += " No variant at any rate ended more than 5% lower than LoRA at its best."
    else:
        text += "."
    if verdict["verdict"] == "reproduces":
        text += (
            " 'Works well for most jobs' is a claim about many tasks; one task can only fail "
            "to contradict it."
        )
    else:
        text += (
            " 'Works well for most jobs' is a claim about many tasks; on this one LoRA ended "
            "more than 5% behind the best variant in at least one of the two comparisons."
        )
    return text


def discussion(results: dict[str, Any]) -> list[str]:
    """One plain paragraph per claim: the figure, the verdict, and what this scale can and
    cannot say about it. Every conclusion is chosen by the figures it describes."""
    return [
        _loraplus_paragraph(results),
        _dora_paragraph(results),
        _qlora_paragraph(results),
        _lora_paragraph(results),
    ]
