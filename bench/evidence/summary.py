"""From the measurements to everything the results file derives from them: the figures of
each claim, the verdicts, the tables, the discussion and the advisor's evidence. Pure, so a
stored results file can be summarized again (`--render`)."""

from __future__ import annotations

from typing import Any

from bench.evidence import analysis
from bench.evidence.discussion import discussion
from bench.evidence.evidence_file import advisor_evidence
from bench.evidence.modes import SWEPT
from bench.evidence.verdicts import verdicts


def summarize(measured: dict[str, Any]) -> dict[str, Any]:
    """The measurements plus everything derived from them: what the results file holds."""
    setup, runs = measured["setup"], measured["runs"]
    claims = analysis.claims(
        runs,
        base_lr=setup["learning_rate"],
        best_lr=measured["best_learning_rate"],
        memory=measured["memory"],
        estimate_7b=measured["estimate_7b"],
    )
    derived = {
        "claims": claims,
        "verdicts": verdicts(claims),
        "per_variant": _per_variant(setup, runs),
        "learning_rate_pick": _picks(measured),
        "sweep_table": _sweep_table(setup, runs),
    }
    results = {**measured, **derived}
    results["discussion"] = discussion(results)
    results["advisor_evidence"] = advisor_evidence(results)
    return results


def _per_variant(setup: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every variant at the base learning rate: final figures and step times over seeds."""
    per_variant = {}
    for key in setup["variants"]:
        chosen = analysis.select(runs, key, setup["learning_rate"])
        per_variant[key] = {
            **{m: analysis.spread(analysis.final(r)[m] for r in chosen) for m in analysis.METRICS},
            "median_step_seconds": analysis.spread(r["median_step_seconds"] for r in chosen),
            "median_step_cpu_seconds": analysis.spread(
                r["median_step_cpu_seconds"] for r in chosen
            ),
            "trainable_parameters": chosen[0]["trainable_parameters"],
        }
    return per_variant


def _sweep_table(setup: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each swept method at each rate: the first seed's final figures, and their means over
    seeds where the rate ran on every seed."""
    first_seed, n_seeds = setup["seeds"][0], len(setup["seeds"])
    return {
        key: {
            f"{lr:g}": {
                f"seed {first_seed}": analysis.final(chosen[0]),
                f"mean of {n_seeds} seeds": {
                    m: analysis.spread(analysis.final(r)[m] for r in chosen)
                    for m in analysis.METRICS
                }
                if len(chosen) == n_seeds
                else None,
            }
            for lr in sorted({r["learning_rate"] for r in runs if r["key"] == key})
            if (chosen := analysis.select(runs, key, lr)) and chosen[0]["seed"] == first_seed
        }
        for key in SWEPT
    }


def _picks(measured: dict[str, Any]) -> dict[str, Any]:
    """How each swept method's best rate was picked."""
    setup, runs = measured["setup"], measured["runs"]
    first_seed = setup["seeds"][0]
    # Files written before picks rested on every seed: the stored pick, from the first seed.
    return measured.get("learning_rate_pick") or {
        key: {
            **analysis.pick_learning_rate(
                [r for r in runs if r["seed"] == first_seed], key, [first_seed], setup["sweep"]
            ),
            "learning_rate": measured["best_learning_rate"][key],
        }
        for key in SWEPT
    }
