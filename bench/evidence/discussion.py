"""The discussion BENCHMARKS.md ends with: one plain paragraph per claim, giving the figure,
the verdict, and what this scale can and cannot say about it. Every conclusion is chosen by the
figures it describes."""

from __future__ import annotations

from typing import Any

from bench.evidence.analysis import mean
from bench.evidence.formatting import MIB, num, pm, speed
from bench.evidence.variants import label
from bench.evidence.verdicts import CHECK_LABELS, headline_7b, lower_beyond_spread


def discussion(results: dict[str, Any]) -> list[str]:
    """One plain paragraph per claim: the figure, the verdict, and what this scale can and
    cannot say about it. Every conclusion is chosen by the figures it describes."""
    return [
        _loraplus_paragraph(results),
        _dora_paragraph(results),
        _qlora_paragraph(results),
        _lora_paragraph(results),
    ]


def _loraplus_paragraph(results: dict[str, Any]) -> str:
    claims, verdicts, base = results["claims"], results["verdicts"], results["base"]
    plus = claims["loraplus"]
    same_block, best_block = plus["same_lr"], plus["best_lr"]
    q_same, q_best = plus["quality_same_lr"], plus["quality_best_lr"]
    base_lr = same_block["learning_rate"]
    lora_lr, plus_lr = best_block["lora_learning_rate"], best_block["loraplus_learning_rate"]
    lora_same, plus_same = (mean(q_same[k]["eval_loss"]) for k in ("baseline", "variant"))
    lora_best, plus_best = (mean(q_best[k]["eval_loss"]) for k in ("baseline", "variant"))
    speed_same = mean(same_block.get("speedup"))
    speed_best = mean(best_block.get("speedup"))

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
            f"loss with a speed-up of {speed(same_block)}"
        )
    at_same += (
        f", and ended at {pm(q_same['variant']['eval_loss'], '{:.3f}')} against LoRA's "
        f"{pm(q_same['baseline']['eval_loss'], '{:.3f}')}."
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
        f"With each at its best rate from the sweep (LoRA {num(lora_lr, '{:g}')}, LoRA+ "
        f"{num(plus_lr, '{:g}')}) LoRA+ reached LoRA's final loss with a speed-up of "
        f"{speed(best_block)}, against the claimed 1.5-2x"
        + (
            f", and ended {ended} ({pm(q_best['variant']['eval_loss'], '{:.3f}')} against "
            f"{pm(q_best['baseline']['eval_loss'], '{:.3f}')}; exact match "
            f"{pm(q_best['exact_match_diff_pts'], '{:+.1f}', ' pts')})"
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
        f"{label(k)}'s best rate is the {p['edge']} the sweep tried, so a rate beyond "
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
        f"{pm(loss, '{:+.1f}', '%')} and exact match "
        f"{pm(dq['exact_match_diff_pts'], '{:+.1f}', ' pts')} against LoRA, for "
        f"{do['extra_parameters_pct_of_adapter']:+.1f}% parameters (the magnitude vectors: one "
        "value per output feature, about 1/(2 x rank) of a square layer's adapter) and "
        f"{pm(do['step_time_pct'], '{:+.0f}', '%')} CPU time per step. {spread_text} Liu et "
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
        f"{num(est.get('qlora_total_gb'), '{:.1f}')} GB against "
        f"{num(est.get('lora_total_gb'), '{:.1f}')} GB, the seed's 6 against 16. Quality: "
        f"held-out loss {pm(qlora['quality']['eval_loss_diff_pct'], '{:+.1f}', '%')}, exact "
        f"match {pm(qlora['quality']['exact_match_diff_pts'], '{:+.1f}', ' pts')} against "
        f"LoRA.{nf4} Measured on this model: {small_memory_sentence(results)}{shrink} The 7B "
        "figure is therefore the advisor's memory model (checked against published "
        "measurements) and, where it ran, the worker's tracer, not a run on a GPU."
    )


def _lora_paragraph(results: dict[str, Any]) -> str:
    lora, verdict = results["claims"]["lora"], results["verdicts"]["lora"]
    tuned = lora.get("tuned") or {}
    text = (
        f"{_headline('LoRA', verdict)}: at the same settings plain LoRA's held-out loss was "
        f"{num(lora.get('loss_gap_pct'), '{:+.1f}%')} against the best variant's "
        f"({label(lora['best_variant'])})"
    )
    if tuned.get("best"):
        best = tuned["best"]
        text += (
            f"; at its best rate ({tuned['lora_learning_rate']:g}) it was "
            f"{tuned['loss_gap_pct']:+.1f}% against the best of every variant at every rate "
            f"run on all seeds ({label(best['key'])} at "
            f"{best['learning_rate']:g}, {best['eval_loss']:.3f})."
        )
        clearly = tuned.get("clearly_better") or []
        if clearly:
            text += (
                " More than 5% lower than LoRA's at its best rate: "
                + ", ".join(
                    f"{label(x['key'])} at {x['learning_rate']:g} "
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
