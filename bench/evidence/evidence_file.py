"""The advisor's evidence file (advisor/data/evidence.json): the compact figures
`advisor/evidence.py` reads and cites next to the papers'."""

from __future__ import annotations

from typing import Any

from bench.evidence.formatting import MIB
from bench.evidence.verdicts import headline_7b


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


def _ms(block: dict[str, Any] | None, digits: int = 2) -> dict[str, float] | None:
    """mean and std, rounded; None when there is no figure."""
    if not block or block.get("mean") is None:
        return None
    return {"mean": round(block["mean"], digits), "std": round(block["std"], digits)}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
