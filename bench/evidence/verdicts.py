"""Verdicts: one rule per claim, written out so the reader can check it. Each verdict is
"reproduces", "partly" or "does not reproduce"; a claim of several parts also has `checks`,
the verdict of each part."""

from __future__ import annotations

from typing import Any

from bench.evidence.analysis import mean

CHECK_LABELS = {
    "quality": "quality",
    "parameters": "parameters under 5%",
    "memory_7b": "7B memory, modeled",
    "memory_small": "memory measured at this scale",
}
"""What each check is called where the reports name it."""


def verdicts(claims: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`{claim: {"verdict": ..., "rule": ...}}`, plus `checks` for a claim of several parts."""
    return {
        "loraplus": _loraplus(claims["loraplus"]),
        "dora": _dora(claims["dora"]),
        "qlora": _qlora(claims["qlora"]),
        "lora": _lora(claims["lora"]),
    }


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


def _loraplus(plus: dict[str, Any]) -> dict[str, Any]:
    same, best = mean(plus["same_lr"]["speedup"]), mean(plus["best_lr"]["speedup"])
    held = [x is not None and x >= 1.4 for x in (same, best)]
    some = [x is not None and x >= 1.1 for x in (same, best)]
    return {
        "verdict": "reproduces" if all(held) else "partly" if any(some) else "does not reproduce",
        "rule": "reproduces when LoRA+ reaches LoRA's final held-out loss at least 1.4x sooner "
        "both at the same learning rate and with each at its best; partly when it is at least "
        "1.1x sooner in one of the two",
    }


def _dora(dora: dict[str, Any]) -> dict[str, Any]:
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
    return {
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


def _qlora(qlora: dict[str, Any]) -> dict[str, Any]:
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
    q_loss = mean(qlora["quality"]["eval_loss_diff_pct"])
    q_em = mean(qlora["quality"]["exact_match_diff_pts"])
    q_quality = (
        "reproduces"
        if q_loss is not None and abs(q_loss) <= 3 and abs(q_em or 0.0) <= 3
        else "does not reproduce"
    )
    checks = {"memory_7b": memory_7b, "memory_small": memory_small, "quality": q_quality}
    return {
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


def _lora(lora: dict[str, Any]) -> dict[str, Any]:
    gaps = [g for g in (lora.get("loss_gap_pct"), (lora.get("tuned") or {}).get("loss_gap_pct"))]
    known = [g for g in gaps if g is not None]
    worst = max(known) if known else None
    return {
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
