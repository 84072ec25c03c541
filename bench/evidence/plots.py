"""The plots BENCHMARKS.md shows, drawn with matplotlib's Agg canvas straight to PNG files (no
display, no pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.evidence import analysis
from bench.evidence.formatting import MIB
from bench.evidence.variants import VARIANTS, label


def plot_eval_loss(results: dict[str, Any], path: Path) -> None:
    """Held-out loss against optimizer step, every variant at the base learning rate (mean
    over seeds, band = min-max), plus LoRA and LoRA+ at their best learning rates."""
    runs, lr = results["runs"], results["setup"]["learning_rate"]
    figure = _figure(8, 5)
    axes = figure.add_subplot()
    for key in VARIANTS:
        curve = analysis.curves(runs, key, lr)
        if not curve["steps"]:
            continue
        (line,) = axes.plot(curve["steps"], curve["mean"], label=f"{label(key)} (lr {lr:g})")
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
                label=f"{label(key)} ("
                + ("" if rate_of == key else f"{label(rate_of)}'s ")
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
    keys = [k for k in VARIANTS if k in memory]
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
    for i, (name, values) in enumerate(bars.items()):
        left.bar([x + (i - 1) * 0.27 for x in xs], values, width=0.27, label=name)
    left.set_xticks(list(xs), [label(k) for k in keys], rotation=20, fontsize=8)
    left.set_ylabel("MiB")
    left.set_yscale("log")
    left.set_ylim(top=max(max(v) for v in bars.values()) * 40)  # room for the legend
    left.set_title(f"measured, {results['setup']['model_short']} on CPU", fontsize=10)
    left.legend(fontsize=8)
    left.grid(alpha=0.3, axis="y")
    est = results["estimate_7b"]["seq_len_2048"]["per_variant"]
    ekeys = [k for k in VARIANTS if k in est]
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
    right.set_xticks(range(len(ekeys)), [label(k) for k in ekeys], rotation=20, fontsize=8)
    right.set_ylabel("GB (10^9 bytes) the card must have free")
    right.set_title("Llama-2-7B, seq 2048, bf16, gradient checkpointing", fontsize=10)
    right.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path)


def _figure(width: float = 7, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure
