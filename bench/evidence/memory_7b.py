"""What fine-tuning Llama-2-7B would take with each variant: the figure the QLoRA claim is
about, which a CPU benchmark cannot measure, so it is modeled (the advisor) and traced (the
worker's tracer) instead."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.evidence.variants import VARIANTS, combination

MODEL = "meta-llama/Llama-2-7b-hf"
TRACED = ("lora", "qlora")


def estimate(trace: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Llama-2-7B with every variant at seq_len 512 and 2048, from the advisor's analytic
    model; with `trace`, LoRA and QLoRA at 2048 also from the worker's memory tracer (two real
    training steps on the meta device, in a subprocess, cached beside the base models)."""
    from advisor.catalog.models import find_model
    from advisor.memory import GIB
    from advisor.memory import estimate as analytic
    from advisor.profile import TrainingSettings

    arch = find_model(MODEL).architecture
    out: dict[str, Any] = {
        "model": MODEL,
        "method": "advisor.memory.estimate (analytic; within 15% of published measurements, "
        "advisor/data/published-memory.csv)",
    }
    for seq in (512, 2048):
        settings = TrainingSettings(seq_len=seq)
        per: dict[str, Any] = {}
        for key in VARIANTS:
            e = analytic(arch, settings, combination(key))
            per[key] = {
                "total_gib": round(e.total_gib, 3),
                "total_gb": round(e.total_bytes / 1e9, 3),
                "weights_gib": round(e.breakdown.weights / GIB, 3),
            }
        out[f"seq_len_{seq}"] = {
            "settings": settings.model_dump(),
            "per_variant": per,
            "lora_total_gb": per["lora"]["total_gb"],
            "qlora_total_gb": per["qlora"]["total_gb"],
        }
    if trace:
        out["traced_seq_len_2048"] = _traced(2048, log)
    return out


def _traced(seq_len: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The worker's tracer's answer for LoRA and QLoRA, or the reason there is none."""
    try:
        from advisor.profile import EstimateRequest
        from bench.evidence.base import cache_root
        from memtrace.runner import TraceRunner, traced_estimate

        runner = TraceRunner(cache_dir=cache_root() / "trace-cache")
        per = {}
        for key in TRACED:
            request = EstimateRequest.model_validate(
                {
                    "model": {"name": MODEL},
                    "training": {"seq_len": seq_len},
                    "variant": key,
                    "method": "trace",
                }
            )
            total_gib = traced_estimate(request, runner).total_gib
            per[key] = {
                "total_gib": round(total_gib, 3),
                "total_gb": round(total_gib * (1 << 30) / 1e9, 3),
            }
        log(
            f"traced 7B: LoRA {per['lora']['total_gb']:.1f} GB, QLoRA "
            f"{per['qlora']['total_gb']:.1f} GB"
        )
        return {
            "method": "worker.memtrace (two training steps traced on the meta device)",
            "per_variant": per,
            "lora_total_gb": per["lora"]["total_gb"],
            "qlora_total_gb": per["qlora"]["total_gb"],
        }
    except Exception as exc:  # the tracer is optional evidence; the analytic figure stands
        log(f"traced 7B estimate unavailable: {exc!r}")
        return {"error": repr(exc)}
