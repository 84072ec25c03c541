"""BENCHMARKS.md: the template below, its slots filled by one small renderer per section (in
the order they appear). Every figure comes from the results dict `summarize` makes."""

from __future__ import annotations

from typing import Any

from bench.evidence import analysis
from bench.evidence.analysis import mean
from bench.evidence.discussion import small_memory_sentence
from bench.evidence.formatting import MIB, num, pm, speed
from bench.evidence.variants import VARIANTS, label
from bench.evidence.verdicts import CHECK_LABELS, headline_7b

TEMPLATE = """\
# Benchmarks: do the design document's claims hold on real training?

loracle's advice cites four published claims. This file tests them by fine-tuning one small \
pretrained model with every variant, through the worker's own training code \
(`worker.training.run_training`), and publishes what came out, including where a claim does \
not reproduce at this scale. The advisor cites these figures next to the papers' \
(`advisor/data/evidence.json`, written by the same run).

Reproduce with the command below. {timing}

```sh
{command}
```

{machine}

## Verdicts

{verdicts}

Figures are mean ± sample standard deviation over seeds (min..max in brackets). A seed sets \
the adapter initialization and the data order; two variants with the same seed see the same \
batches, so ratios and differences are taken per seed.

## Setup

- **Base model**: {base_model}
- **Task**: {task}
- **Metrics**: held-out loss (mean cross-entropy per answer token, eos included); exact match \
(every answer token is the most likely one given the true prefix, which is the same as greedy \
decoding printing the exact answer and stopping); evaluated every {eval_every} steps by a hook \
on the worker's run.
- **Training**: {training}
- **Learning-rate sweep**: {sweep}

![held-out loss against step]({eval_loss_plot})

## LoRA+: steps to the target held-out loss

Target: the worst final held-out loss among LoRA's seeds (so every LoRA run reaches it); \
steps interpolated between evaluations.

{steps_to_target}

Best rates are LoRA's and LoRA+'s from the sweep, used for QLoRA and QLoRA + LoRA+ alike. \
Final held-out figures, LoRA vs LoRA+ at their best rates: {at_best_rates}.

Sweep: final held-out loss / exact match on seed {first_seed}, and the mean held-out loss \
over all {n_seeds} seeds where the rate ran on every seed (the pick is the lowest mean; \
marked *):

{sweep_table}

## Quality at equal steps, parameters and step time

Every variant at the base learning rate, after the same number of steps.

{quality_tables}

Step times are medians over each run's steps (evaluation excluded) of the process's CPU time, \
both threads together, which other jobs on a shared machine inflate far less than the wall \
clock (given in brackets); the overheads compare CPU times. Read them as rough. On CPU, \
bitsandbytes' NF4 matmuls dequantize in software; a CUDA card's kernels cost far less.

## QLoRA: memory

{memory_table}

Weights are the bytes of the model's frozen tensors as the worker builds them (NF4 packing \
and quantization statistics included); the peak is the worker's own measurement (growth of \
the process's resident memory during `run_training`, each variant in a fresh process). \
{small_memory}

Llama-2-7B: the memory the card must have free (bf16, micro batch 1, gradient checkpointing, \
AdamW, rank 16 on all linear layers), from the advisor's analytic model and, where it ran, the \
worker's tracer (two real training steps of the worker's model on PyTorch's meta device):

{memory_7b_table}

{memory_7b_methods}

![memory per variant]({memory_plot})

## What reproduces, what does not, and why that may be

{discussion}

"""

BUDGET_MINUTES = {"full": 30, "quick": 5}
"""The wall time each mode must stay under on 2 CPU cores."""


def markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    """BENCHMARKS.md; `plots`: where each plot is, relative to the file."""
    s = results["setup"]
    return TEMPLATE.format(
        timing=" ".join(_timing_sentences(results)),
        command=s["command"],
        machine=_machine(results),
        verdicts=_verdicts(results),
        base_model=_base_model(results),
        task=_task(results),
        eval_every=s["eval_every"],
        training=_training(s),
        sweep=_sweep_sentence(results),
        eval_loss_plot=plots["eval_loss"],
        steps_to_target=_steps_to_target(results),
        at_best_rates=_at_best_rates(results),
        first_seed=s["seeds"][0],
        n_seeds=len(s["seeds"]),
        sweep_table=_sweep_table(results),
        quality_tables=_blocks(
            _per_variant_table(results), _by_kind_table(results), _comparisons_table(results)
        ),
        memory_table=_memory_table(results),
        small_memory=small_memory_sentence(results),
        memory_7b_table=_memory_7b_table(results),
        memory_7b_methods=_memory_7b_methods(results),
        memory_plot=plots["memory"],
        discussion="\n".join(f"- {line}" for line in results["discussion"]),
    )


# ---------------------------------------------------------------------------------------------
# The introduction
# ---------------------------------------------------------------------------------------------


def _timing_sentences(results: dict[str, Any]) -> list[str]:
    """How long this run and the recorded quick runs took: every figure from the records."""
    t = results.get("timing") or {}
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
    for key, name in (("cold", "building its base in the run"), ("warm", "with its base cached")):
        q = quick.get(key)
        if q:
            base_part = (
                f"; {_minutes(q['base_seconds'])} of it for the base" if key == "cold" else ""
            )
            parts.append(
                f"{_minutes(q['total_seconds'])} {name} ({q['date'][:10]}, {q['cpus']} cores"
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


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} minutes"


def _budget(mode: str, seconds: float, cpus: int | None) -> str:
    budget = BUDGET_MINUTES.get(mode)
    if budget is None or cpus != 2:
        return ""
    side = "within" if seconds < budget * 60 else "over"
    return f", {side} its budget of {budget} minutes on 2 cores"


def _machine(results: dict[str, Any]) -> str:
    m, versions = results["machine"], results["setup"]["versions"]
    return (
        f"Measured {m['date']} on {m['cpus']} CPU cores ({m['platform']}), Python "
        f"{m['python']}, "
        + ", ".join(f"{k} {val}" for k, val in versions.items() if k != "python")
        + "."
    )


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------


def _verdicts(results: dict[str, Any]) -> str:
    """Whether the task was learned, a row per claim, and the rules behind the verdicts."""
    rows = [_loraplus_row(results), _dora_row(results), _qlora_row(results), _lora_row(results)]
    rules = "; ".join(f"{label(k)}: {x['rule']}" for k, x in results["verdicts"].items())
    return _blocks(
        _task_learned(results),
        _table(["claim (design document)", "loracle measured", "verdict"], rows),
        f"Rules: {rules}.",
    )


def _task_learned(results: dict[str, Any]) -> str:
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
        f"{above:+.3f}, the best variant ({label(best_key)}) "
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


def _loraplus_row(results: dict[str, Any]) -> list[str]:
    plus, verdict = results["claims"]["loraplus"], results["verdicts"]["loraplus"]
    return [
        "LoRA+: reaches the target quality roughly 1.5-2x faster",
        f"{speed(plus['same_lr'])} at the same learning rate; {speed(plus['best_lr'])} at "
        "each one's best",
        f"**{verdict['verdict']}**",
    ]


def _dora_row(results: dict[str, Any]) -> list[str]:
    dora, verdict = results["claims"]["dora"], results["verdicts"]["dora"]
    dq, do = dora["quality"], dora["overhead"]
    return [
        "DoRA: quality a few percent higher, under 5% more parameters",
        f"held-out loss {pm(dq['eval_loss_diff_pct'], '{:+.1f}', '%')}, exact match "
        f"{pm(dq['exact_match_diff_pts'], '{:+.1f}', ' pts')} vs LoRA; "
        f"+{do['extra_parameters_pct_of_adapter']:.2f}% parameters",
        f"**{verdict['verdict']}**{_checks(verdict)}",
    ]


def _qlora_row(results: dict[str, Any]) -> list[str]:
    q, verdict = results["claims"]["qlora"], results["verdicts"]["qlora"]
    est = headline_7b(q["memory_7b"])
    small = q.get("measured_small") or {}
    peak = small.get("peak_rss_growth_bytes") or {}
    measured_peak = (
        f"measured on the {results['setup']['model_short']} model: peak "
        f"{peak['qlora'] / MIB:.0f} MiB vs {peak['lora'] / MIB:.0f} MiB "
        f"({small['peak_ratio']:.2f}x); "
        if peak.get("lora") and peak.get("qlora")
        else ""
    )
    return [
        "QLoRA: 7B in about 6 GB instead of about 16 GB, quality almost untouched",
        f"7B ({est['source']} estimate, not a measurement; seq 2048) "
        f"{est['qlora_total_gb']:.1f} GB vs {est['lora_total_gb']:.1f} GB; {measured_peak}"
        f"held-out loss {pm(q['quality']['eval_loss_diff_pct'], '{:+.1f}', '%')}, exact match "
        f"{pm(q['quality']['exact_match_diff_pts'], '{:+.1f}', ' pts')} vs LoRA",
        f"**{verdict['verdict']}**{_checks(verdict)}",
    ]


def _lora_row(results: dict[str, Any]) -> list[str]:
    lo, verdict = results["claims"]["lora"], results["verdicts"]["lora"]
    tuned = lo.get("tuned") or {}
    tuned_text = (
        f"; at its best rate ({tuned['lora_learning_rate']:g}) "
        f"{tuned['loss_gap_pct']:+.1f}% against the best of any variant at any rate "
        f"({label(tuned['best']['key'])} at {tuned['best']['learning_rate']:g}, "
        f"{tuned['best']['eval_loss']:.3f})"
        if tuned.get("best")
        else ""
    )
    return [
        "LoRA works well for most jobs",
        f"held-out loss {pm(lo['eval_loss'], '{:.3f}')}, "
        f"{num(lo['loss_gap_pct'], '{:+.1f}')}% against the best variant at the same settings "
        f"({label(lo['best_variant'])}, {pm(lo['best_eval_loss'], '{:.3f}')})"
        f"{tuned_text}; from {pm(lo['base_eval_loss'], '{:.2f}')} before fine-tuning",
        f"**{verdict['verdict']}**",
    ]


def _checks(verdict: dict[str, Any]) -> str:
    checks = verdict.get("checks")
    if not checks:
        return ""
    return " (" + "; ".join(f"{CHECK_LABELS.get(k, k)}: {x}" for k, x in checks.items()) + ")"


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------


def _base_model(results: dict[str, Any]) -> str:
    s, base = results["setup"], results["base"]
    hl = base["held_out_loss"]
    return (
        f"{s['model']}: {base['parameters']:,} parameters "
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


def _task(results: dict[str, Any]) -> str:
    s, lora = results["setup"], results["claims"]["lora"]
    return (
        f"{s['task']} {s['train_rows']:,} training rows, {s['eval_rows']} held-out "
        "rows (no held-out expression occurs in training). Examples: "
        + "; ".join(f"`{e['prompt'].strip()}` → `{e['completion']}`" for e in s["examples"][:4])
        + f". Before fine-tuning the base gets {pm(lora['base_exact_match'], '{:.3f}')} of them "
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


def _training(s: dict[str, Any]) -> str:
    return (
        f"{s['steps']} optimizer steps of {s['batch_size']} rows, rank "
        f"{s['lora_rank']} adapters on every linear layer (alpha {2 * s['lora_rank']}), dropout "
        f"0, AdamW, cosine schedule with 3% warmup (the advisor's suggestion), fp32 on CPU; "
        f"base learning rate {s['learning_rate']:g}, LoRA+ ratio 16. QLoRA stores the base's "
        "linear layers in NF4 with double quantization (bitsandbytes on CPU). Seeds "
        f"{', '.join(map(str, s['seeds']))}."
    )


def _sweep_sentence(results: dict[str, Any]) -> str:
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
            f"{label(key)} {lr:g}"
            + (f" (picked on the {pick['picked_on']})" if pick.get("picked_on") else "")
        )
        if pick.get("edge"):
            beyond = "higher" if pick["edge"] == "highest" else "lower"
            warnings.append(
                f"**{label(key)}'s best rate is the {pick['edge']} of the sweep**: a "
                f"{beyond} one may be better still, and its figures at its best rate may "
                "understate it"
            )
    text += ", ".join(chosen) + "; QLoRA and QLoRA + LoRA+ ran at those rates on every seed."
    if warnings:
        text += " " + "; ".join(warnings) + "."
    return text


# ---------------------------------------------------------------------------------------------
# LoRA+: steps to the target
# ---------------------------------------------------------------------------------------------


def _steps_to_target(results: dict[str, Any]) -> str:
    s, c = results["setup"], results["claims"]
    plus = c["loraplus"]
    rows = [
        [
            name,
            lrs,
            num(block["target_eval_loss"], "{:.3f}"),
            pm(block["baseline_steps"], "{:.0f}"),
            pm(block["steps"], "{:.0f}"),
            speed(block),
        ]
        for name, block, lrs in (
            (
                "same learning rate",
                plus["same_lr"],
                f"{s['learning_rate']:g} / {s['learning_rate']:g}",
            ),
            (
                "each at its best",
                plus["best_lr"],
                f"{plus['best_lr']['lora_learning_rate']:g} / "
                f"{plus['best_lr']['loraplus_learning_rate']:g}",
            ),
        )
    ]
    qp = c["qlora+loraplus"]["speed_vs_qlora"]
    rows.append(
        [
            "QLoRA + LoRA+ vs QLoRA, same rate",
            f"{s['learning_rate']:g}",
            num(qp["target_eval_loss"], "{:.3f}"),
            f"{pm(qp['baseline_steps'], '{:.0f}')} (QLoRA)",
            pm(qp["steps"], "{:.0f}"),
            speed(qp),
        ]
    )
    qb = c["qlora+loraplus"]["speed_vs_qlora_best_lr"]
    if qb.get("per_seed"):
        rows.append(
            [
                "QLoRA + LoRA+ vs QLoRA, each at its best",
                f"{num(qb['qlora_learning_rate'], '{:g}')} / {num(qb['learning_rate'], '{:g}')}",
                num(qb["target_eval_loss"], "{:.3f}"),
                f"{pm(qb['baseline_steps'], '{:.0f}')} (QLoRA)",
                pm(qb["steps"], "{:.0f}"),
                speed(qb),
            ]
        )
    head = ["comparison", "learning rates", "target loss", "LoRA steps", "LoRA+ steps", "speedup"]
    return _table(head, rows)


def _at_best_rates(results: dict[str, Any]) -> str:
    quality = results["claims"]["loraplus"]["quality_best_lr"]
    lora, plus = quality["baseline"], quality["variant"]
    return (
        f"loss {pm(lora['eval_loss'], '{:.3f}')} vs {pm(plus['eval_loss'], '{:.3f}')}, "
        f"exact match {pm(lora['exact_match'], '{:.3f}')} vs {pm(plus['exact_match'], '{:.3f}')}"
    )


def _sweep_table(results: dict[str, Any]) -> str:
    """Each swept method at each rate: the first seed's final figures, and the mean over seeds
    where there is one, the picked rate marked *."""
    s, sweep = results["setup"], results["sweep_table"]
    first, n = s["seeds"][0], len(s["seeds"])
    head = ["learning rate"]
    for key in sweep:
        head += [f"{label(key)}, seed {first}", f"{label(key)}, mean"]
    rows = []
    for lr in s["sweep"]:
        cells = [f"{lr:g}"]
        for key in sweep:
            cell = sweep[key].get(f"{lr:g}") or {}
            one = cell.get(f"seed {first}")
            over_seeds = cell.get(f"mean of {n} seeds")
            best = results["best_learning_rate"].get(key)
            mark = "*" if best is not None and abs(best - lr) <= 1e-12 * lr else ""
            cells.append(f"{one['eval_loss']:.3f} / {one['exact_match']:.3f}" if one else "")
            cells.append(f"{pm(over_seeds['eval_loss'], '{:.3f}')}{mark}" if over_seeds else "")
        rows.append(cells)
    return _table(head, rows)


# ---------------------------------------------------------------------------------------------
# Quality at equal steps
# ---------------------------------------------------------------------------------------------


def _per_variant_table(results: dict[str, Any]) -> str:
    majority_all = (results["setup"].get("majority_by_kind") or {}).get("all")
    rows = [
        [
            label(key),
            pm(row["eval_loss"], "{:.3f}"),
            pm(row["exact_match"], "{:.3f}"),
            num(_above(row["exact_match"], majority_all), "{:+.3f}"),
            pm(row["token_accuracy"], "{:.3f}"),
            f"{row['trainable_parameters']:,}",
            f"{pm(row['median_step_cpu_seconds'], '{:.3f}')} "
            f"({num(mean(row['median_step_seconds']), '{:.3f}')})",
        ]
        for key in VARIANTS
        if (row := results["per_variant"].get(key))
    ]
    head = [
        "variant",
        "held-out loss",
        "exact match",
        "exact match above the answer-frequency baseline",
        "token accuracy",
        "trainable parameters",
        "median step, CPU s (wall s)",
    ]
    return _table(head, rows)


def _above(block: dict[str, Any] | None, baseline: float | None) -> float | None:
    m = mean(block)
    return None if m is None or baseline is None else m - baseline


def _by_kind_table(results: dict[str, Any]) -> str:
    """Exact match by kind of expression, against always answering the kind's most common
    answer; empty when the runs did not record kinds."""
    s, runs = results["setup"], results["runs"]
    kinds = sorted({k for r in runs for k in analysis.final(r).get("exact_match_by_kind", {})})
    if not kinds:
        return ""
    rows = []
    majority = s.get("majority_by_kind")
    if majority:
        rows.append(
            ["always the kind's most common answer"]
            + [f"{majority.get(k, 0.0):.2f}" for k in kinds]
        )
    lora_runs = analysis.select(runs, "lora", s["learning_rate"])
    points_of = [("base (step 0)", [r["evals"][0] for r in lora_runs])]
    points_of += [
        (label(key), [analysis.final(r) for r in analysis.select(runs, key, s["learning_rate"])])
        for key in VARIANTS
    ]
    for name, points in points_of:
        if points:
            cells = [
                sum(p["exact_match_by_kind"].get(k, 0.0) for p in points) / len(points)
                for k in kinds
            ]
            rows.append([name] + [f"{c:.2f}" for c in cells])
    return _blocks(
        "Exact match by kind of expression (mean over seeds, base learning rate; step 0 is "
        "the base model before fine-tuning). The first row is what answering every "
        "expression of a kind with that kind's most common answer would score: where a "
        "variant scores about that, it has learned how often each answer comes, not how to "
        "read the expression:",
        _table(["variant", *kinds], rows),
    )


def _comparisons_table(results: dict[str, Any]) -> str:
    """Each variant against the one it adds to: quality, parameters and step time."""
    c = results["claims"]
    rows = []
    for name, quality, over in (
        ("DoRA vs LoRA", c["dora"]["quality"], c["dora"]["overhead"]),
        ("QLoRA vs LoRA", c["qlora"]["quality"], c["qlora"]["overhead"]),
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
        step = pm(over["step_time_pct"], "{:+.0f}", "%") if over else ""
        rows.append(
            [
                name,
                pm(quality["eval_loss_diff_pct"], "{:+.1f}", "%"),
                pm(quality["exact_match_diff_pts"], "{:+.1f}", " pts"),
                params,
                step,
            ]
        )
    head = ["comparison", "held-out loss", "exact match", "extra parameters", "step time"]
    return _table(head, rows)


# ---------------------------------------------------------------------------------------------
# QLoRA: memory
# ---------------------------------------------------------------------------------------------


def _memory_table(results: dict[str, Any]) -> str:
    """What each variant's probe measured on the small model."""
    rows = []
    for key in VARIANTS:
        mem = results["memory"].get(key)
        if not mem:
            continue
        mb = mem["model_bytes"]
        rss = mem["peak_memory"].get("rss_growth_bytes")
        rows.append(
            [
                label(key),
                f"{mb['weights'] / MIB:.2f}",
                f"{mb['adapted_linears'] / MIB:.2f}",
                f"{mb['trainable'] / MIB:.2f}",
                num(rss and rss / MIB, "{:.0f}"),
                num(mem.get("base_lm_loss"), "{:.3f}"),
            ]
        )
    head = [
        "variant",
        "frozen weights (MiB)",
        "of which adapted linear layers (MiB)",
        "adapter (MiB)",
        "peak RSS growth of the run (MiB)",
        "base's held-out loss as stored",
    ]
    return _table(head, rows)


def _memory_7b_table(results: dict[str, Any]) -> str:
    estimate = results["estimate_7b"]
    traced = (estimate.get("traced_seq_len_2048") or {}).get("per_variant", {})
    e512, e2048 = estimate["seq_len_512"]["per_variant"], estimate["seq_len_2048"]["per_variant"]
    rows = [
        [
            label(key),
            _gb(e512[key]),
            _gb(e2048[key]),
            _gb(traced[key]) if traced.get(key) else "",
        ]
        for key in VARIANTS
        if e512.get(key) and e2048.get(key)
    ]
    head = ["variant", "analytic, seq 512", "analytic, seq 2048", "traced, seq 2048"]
    return _table(head, rows)


def _gb(figure: dict[str, Any]) -> str:
    return f"{figure['total_gb']:.1f} GB ({figure['total_gib']:.1f} GiB)"


def _memory_7b_methods(results: dict[str, Any]) -> str:
    estimate = results["estimate_7b"]
    text = f"Analytic: {estimate['method']}."
    traced = estimate.get("traced_seq_len_2048") or {}
    if traced.get("error"):
        text += f"\nThe tracer gave no answer on this run ({traced['error']})."
    return text


# ---------------------------------------------------------------------------------------------
# Markdown building blocks
# ---------------------------------------------------------------------------------------------


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = [_row(head), "|" + "---|" * len(head), *(_row(cells) for cells in rows)]
    return "\n".join(lines)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _blocks(*blocks: str) -> str:
    """Paragraphs and tables, a blank line between them; empty ones left out."""
    return "\n\n".join(block for block in blocks if block)
