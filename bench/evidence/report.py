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


def verdicts(claims: dict[str, Any]) -> dict[str, dict[str, str]]:
    """`{claim: {"verdict": reproduces | partly | does not reproduce, "rule": ...}}`."""
    out: dict[str, dict[str, str]] = {}

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
    em_pts = _mean(dora["quality"]["exact_match_diff_pts"])
    params_pct = dora["overhead"].get("extra_parameters_pct_of_adapter")
    lower = loss.get("mean") is not None and loss["mean"] < 0
    clearly = lower and loss["mean"] <= -1.0 and loss["max"] < 0 and (em_pts or 0.0) >= 0.0
    small = params_pct is not None and params_pct < 5
    out["dora"] = {
        "verdict": "reproduces"
        if clearly and small
        else "partly"
        if lower or (em_pts or 0.0) > 0 or small
        else "does not reproduce",
        "rule": "reproduces when the held-out loss is at least 1% lower than LoRA's on average "
        "and lower on every seed, exact match no worse, and the extra parameters under 5% of "
        "LoRA's adapter; partly when only some of that holds",
    }

    qlora = claims["qlora"]
    est = headline_7b(qlora["memory_7b"])
    q_gb, l_gb = est.get("qlora_total_gb"), est.get("lora_total_gb")
    memory_ok = q_gb is not None and l_gb is not None and 4.5 <= q_gb <= 8 and 12 <= l_gb <= 20
    q_loss = _mean(qlora["quality"]["eval_loss_diff_pct"])
    q_em = _mean(qlora["quality"]["exact_match_diff_pts"])
    quality_ok = q_loss is not None and abs(q_loss) <= 3 and abs(q_em or 0.0) <= 3
    out["qlora"] = {
        "verdict": "reproduces"
        if memory_ok and quality_ok
        else "partly"
        if memory_ok or quality_ok
        else "does not reproduce",
        "rule": "memory: the 7B estimate lies in 4.5-8 GB for QLoRA and 12-20 GB for LoRA; "
        "quality: held-out loss within 3% and exact match within 3 points of LoRA's",
    }

    lora = claims["lora"]
    gap = lora.get("loss_gap_pct")
    out["lora"] = {
        "verdict": "reproduces"
        if gap is not None and gap <= 5
        else "partly"
        if gap is not None and gap <= 15
        else "does not reproduce",
        "rule": "reproduces when LoRA's held-out loss is within 5% of the best variant's at the "
        "same settings, partly within 15%",
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


def advisor_evidence(results: dict[str, Any]) -> dict[str, Any]:
    """The compact figures `advisor/evidence.py` reads and cites."""
    c = results["claims"]
    setup = results["setup"]
    verdict = {k: v["verdict"] for k, v in results["verdicts"].items()}
    qmem = c["qlora"]["memory_small"]
    weights = {k: (qmem.get(k) or {}).get("model_bytes", {}) for k in ("lora", "qlora")}

    def ratio(part: str) -> float | None:
        q, lo = weights["qlora"].get(part), weights["lora"].get(part)
        return round(q / lo, 3) if q and lo else None

    est = headline_7b(c["qlora"]["memory_7b"])
    return {
        "schema": 1,
        "source": "loracle's evidence benchmark (python -m bench evidence); tables and plots in "
        "BENCHMARKS.md",
        "date": results["machine"]["date"],
        "setup": {
            "model": setup["model_short"] + " pretrained on Python's standard library",
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
        },
        "qlora": {
            "weights_ratio_small": ratio("weights"),
            "adapted_linears_ratio_small": ratio("adapted_linears"),
            "estimate_7b_gb": {
                "lora": est.get("lora_total_gb"),
                "qlora": est.get("qlora_total_gb"),
                "method": est.get("source"),
            },
            "eval_loss_diff_pct": _ms(c["qlora"]["quality"]["eval_loss_diff_pct"], 1),
            "exact_match_diff_pts": _ms(c["qlora"]["quality"]["exact_match_diff_pts"], 1),
            "step_time_pct": _ms(c["qlora"]["overhead"]["step_time_pct"], 0),
            "verdict": verdict["qlora"],
        },
        "qlora+loraplus": {
            "speedup_vs_qlora": _ms(c["qlora+loraplus"]["speed_vs_qlora"]["speedup"]),
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
            "loss_gap_pct": round(c["lora"]["loss_gap_pct"], 1)
            if c["lora"]["loss_gap_pct"] is not None
            else None,
            "best_variant": c["lora"]["best_variant"],
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
    build = base.get("build_seconds")
    cpu = results.get("cpu_seconds")
    add(
        f"Reproduce with the command below. This run took {results['runtime_seconds'] / 60:.1f} "
        "minutes on the machine described under it"
        + (f" ({cpu / 60:.0f} CPU-minutes)" if cpu else "")
        + f", with the base model {'from the cache' if base.get('cached') else 'built in the run'}"
        + (f"; building it took {build / 60:.1f} minutes" if build else "")
        + ". `--quick` runs a smaller version (2 seeds, 40 steps, 2 learning rates) in about 2 "
        "minutes once the base is cached (5.0 minutes on 2026-12-01 on this machine, building "
        "the base included), and publishes nothing."
    )
    add("")
    add("```sh")
    add(s["command"])
    add("```")
    add("")
    add(
        f"Measured {m['date']} on {m['cpus']} CPU cores ({m['platform']}), Python "
        f"{m['python']}, "
        + ", ".join(f"{k} {val}" for k, val in s["versions"].items() if k != "python")
        + f"; whole run {results['runtime_seconds'] / 60:.1f} minutes "
        f"(base model {'from cache' if base.get('cached') else 'built in this run'})."
    )
    add("")
    add("## Verdicts")
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
        f"**{v['dora']['verdict']}** |"
    )
    q = c["qlora"]
    est = headline_7b(q["memory_7b"])
    add(
        f"| QLoRA: 7B in about 6 GB instead of about 16 GB, quality almost untouched | "
        f"7B ({est['source']}, seq 2048) {est['qlora_total_gb']:.1f} GB vs "
        f"{est['lora_total_gb']:.1f} GB; "
        f"held-out loss {_pm(q['quality']['eval_loss_diff_pct'], '{:+.1f}', '%')}, exact match "
        f"{_pm(q['quality']['exact_match_diff_pts'], '{:+.1f}', ' pts')} vs LoRA | "
        f"**{v['qlora']['verdict']}** |"
    )
    lo = c["lora"]
    add(
        f"| LoRA works well for most jobs | held-out loss {_pm(lo['eval_loss'], '{:.3f}')}, "
        f"{_num(lo['loss_gap_pct'], '{:+.1f}')}% against the best variant at the same settings "
        f"({VARIANT_LABELS[lo['best_variant']]}, {_pm(lo['best_eval_loss'], '{:.3f}')}); from "
        f"{_pm(lo['base_eval_loss'], '{:.2f}')} before fine-tuning | **{v['lora']['verdict']}** |"
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
        + f". Cached in `~/.cache/loracle/bench/{base['key']}`, rebuilt "
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
            f"{s['majority_by_kind']['all']:.3f} right: exact match at this scale is mostly "
            "about learning how often each answer comes, and only where a model beats that "
            "(see the table by kind) has it learned to read the expression, so the held-out "
            "loss, which rewards the probability given to the right answer, is the main measure "
            "of quality here."
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
    add(
        f"- **Learning-rate sweep** (seed {s['seeds'][0]}): LoRA and LoRA+ at "
        + ", ".join(f"{lr:g}" for lr in s["sweep"])
        + "; the best (lowest final held-out "
        f"loss) was LoRA {results['best_learning_rate']['lora']:g}, LoRA+ "
        f"{results['best_learning_rate']['loraplus']:g}, then run on every seed."
    )
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
    add("Sweep (seed " + str(s["seeds"][0]) + "), final held-out loss / exact match:")
    add("")
    add("| learning rate | " + " | ".join(VARIANT_LABELS[k] for k in sweep) + " |")
    add("|---|" + "---|" * len(sweep))
    for lr in s["sweep"]:
        cells = []
        for key in sweep:
            cell = sweep[key].get(f"{lr:g}")
            cells.append(f"{cell['eval_loss']:.3f} / {cell['exact_match']:.3f}" if cell else "")
        add(f"| {lr:g} | " + " | ".join(cells) + " |")
    add("")
    add("## Quality at equal steps, parameters and step time")
    add("")
    add("Every variant at the base learning rate, after the same number of steps.")
    add("")
    add(
        "| variant | held-out loss | exact match | token accuracy | trainable parameters | "
        "median step, CPU s (wall s) |"
    )
    add("|---|---|---|---|---|---|")
    for key, label in VARIANT_LABELS.items():
        row = results["per_variant"].get(key)
        if not row:
            continue
        add(
            f"| {label} | {_pm(row['eval_loss'], '{:.3f}')} | {_pm(row['exact_match'], '{:.3f}')} "
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
        "variant in a fresh process). At this size the embeddings and output head, which "
        "QLoRA leaves unquantized, are a large share of the weights, and the resident memory "
        "is dominated by activations, the logits and the libraries' own allocations."
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


def discussion(
    claims: dict[str, Any],
    verdicts: dict[str, Any],
    base: dict[str, Any],
    memory: dict[str, Any],
) -> list[str]:
    """One plain paragraph per claim: the figure, the verdict, and what this scale can and
    cannot say about it."""
    params = base["parameters"]
    plus, dora, qlora, lora = claims["loraplus"], claims["dora"], claims["qlora"], claims["lora"]
    same_block, best_block = plus["same_lr"], plus["best_lr"]
    q_same = plus["quality_same_lr"]
    if same_block.get("reached", 0) == 0 and same_block.get("per_seed"):
        at_same = (
            f"At the same base learning rate ({same_block['learning_rate']:g}, where LoRA does "
            f"well) LoRA+ never reached LoRA's final loss: B's rate, 16x that, overshoots, and "
            f"LoRA+ ends at {_pm(q_same['variant']['eval_loss'], '{:.3f}')} against LoRA's "
            f"{_pm(q_same['baseline']['eval_loss'], '{:.3f}')}."
        )
    else:
        at_same = (
            f"At the same base learning rate ({same_block['learning_rate']:g}) LoRA+ reached "
            f"LoRA's final loss {_speed(same_block)} sooner."
        )
    q_best = plus["quality_best_lr"]
    lines = [
        f"LoRA+ ({verdicts['loraplus']['verdict']}): {at_same} With each at its best rate from "
        f"the sweep (LoRA {_num(best_block['lora_learning_rate'], '{:g}')}, LoRA+ "
        f"{_num(best_block['loraplus_learning_rate'], '{:g}')}) LoRA+ reached LoRA's final "
        f"loss {_speed(best_block)} sooner, against the claimed 1.5-2x, and ended lower "
        f"({_pm(q_best['variant']['eval_loss'], '{:.3f}')} against "
        f"{_pm(q_best['baseline']['eval_loss'], '{:.3f}')}; exact match "
        f"{_pm(q_best['exact_match_diff_pts'], '{:+.1f}', ' pts')}). So the speed-up holds "
        "when LoRA+ gets its own, lower learning rate; reused at LoRA's rate it hurts. Hayou "
        "et al. tune the rate for each method too, on models of hundreds of millions of "
        f"parameters and more; at hidden size {base['spec']['hidden_size']} "
        f"({params / 1e6:.1f}M parameters) ratio 16 was not tuned for this width, and a "
        "cosine schedule over a short budget slows every variant's last steps, which shortens "
        "any lead.",
    ]
    dq, do = dora["quality"], dora["overhead"]
    lines.append(
        f"DoRA ({verdicts['dora']['verdict']}): held-out loss "
        f"{_pm(dq['eval_loss_diff_pct'], '{:+.1f}', '%')} and exact match "
        f"{_pm(dq['exact_match_diff_pts'], '{:+.1f}', ' pts')} against LoRA, for "
        f"{do['extra_parameters_pct_of_adapter']:+.1f}% parameters (the magnitude vectors: one "
        "value per output feature, about 1/(2 x rank) of a square layer's adapter) and "
        f"{_pm(do['step_time_pct'], '{:+.0f}', '%')} CPU time per step. Liu et al. report 1-4 "
        "points on commonsense reasoning for 7B-13B models, largest at low ranks where LoRA "
        f"lacks capacity; here rank-16 adapters are "
        f"{100 * do['baseline_trainable_parameters'] / params:.0f}% of the model's size, so "
        "capacity is hardly the bottleneck, and the spread between seeds is of the size of "
        "the difference."
    )
    base_loss = {k: (memory.get(k) or {}).get("base_lm_loss") for k in ("lora", "qlora")}
    nf4 = (
        f" NF4 itself costs the pretrained model little: its held-out loss on the standard "
        f"library is {base_loss['qlora']:.3f} nats/token in NF4 against "
        f"{base_loss['lora']:.3f} in fp32."
        if None not in base_loss.values()
        else ""
    )
    est = headline_7b(qlora["memory_7b"])
    adapted = {
        k: (memory.get(k) or {}).get("model_bytes", {}).get("adapted_linears")
        for k in ("lora", "qlora")
    }
    shrink = adapted["lora"] / adapted["qlora"] if adapted["lora"] and adapted["qlora"] else None
    lines.append(
        f"QLoRA ({verdicts['qlora']['verdict']}): for a 7B model the {est['source']} figure is "
        f"{_num(est.get('qlora_total_gb'), '{:.1f}')} GB against "
        f"{_num(est.get('lora_total_gb'), '{:.1f}')} GB, the seed's 6 against 16. Quality: "
        f"held-out loss {_pm(qlora['quality']['eval_loss_diff_pct'], '{:+.1f}', '%')}, exact "
        f"match {_pm(qlora['quality']['exact_match_diff_pts'], '{:+.1f}', ' pts')} against "
        f"LoRA.{nf4} On this model the memory claim cannot be measured as the seed states "
        f"it: NF4 shrinks the adapted linear layers {_num(shrink, '{:.1f}x')} against fp32 "
        f"({_num(shrink and shrink / 2, '{:.1f}x')} against the 16-bit weights of a GPU run), "
        "but the embeddings and head it leaves alone are a large "
        "share of a small model's weights, and a process's memory is dominated by the "
        "libraries, the activations and the logits. The 7B figure is therefore the advisor's "
        "memory model (checked against published measurements) and, where it ran, the "
        "worker's tracer, not a run on a GPU."
    )
    gap = lora.get("loss_gap_pct")
    tuned = plus["quality_best_lr"]["baseline"]["eval_loss"]
    lines.append(
        f"LoRA ({verdicts['lora']['verdict']}): at the same settings plain LoRA's held-out loss "
        f"was {_num(gap, '{:+.1f}%')} against the best variant's "
        f"({VARIANT_LABELS.get(lora['best_variant'], lora['best_variant'])}); only LoRA+ at its "
        f"own learning rate did clearly better ({_pm(q_best['variant']['eval_loss'], '{:.3f}')} "
        f"against LoRA's {_pm(tuned, '{:.3f}')} at its best rate). 'Works well for most jobs' "
        "is a claim about many tasks; one task can only fail to contradict it."
    )
    return lines
