"""Answers of the advice endpoints, serialised once per distinct request.

Recommendations and analytic estimates are pure functions of the validated request (the
catalogs and the memory model are fixed for a running process), and many users ask about
the same popular model and card. A bounded LRU of serialised answers turns a repeated
question into a dictionary lookup.

Traced estimates (`method: "trace"`) need torch: `TraceRunner` runs `python -m worker trace`
in a subprocess with a time limit and caches its answers in memory and under
`$LORACLE_DATA_DIR/trace-cache/`, keyed by the request and the versions of torch,
transformers, peft and bitsandbytes. A trace that fails or overruns answers 422 naming the
field to change.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from typing import Annotated, Any

from fastapi import Depends

from advisor.catalog.models import find_model
from advisor.decide import effective_training, estimate_only, recommend, resolve_card, resolve_model
from advisor.errors import InvalidInput, Problem
from advisor.profile import EstimateRequest, Profile
from advisor.variants import combination
from api.deps import SettingsDep
from worker.memtrace.runner import TraceFailed, TraceRunner, request_payload

CACHE_SIZE = 4096  # about 5 KB an answer: 20 MB at most


def _dumps(answer: dict[str, object]) -> bytes:
    return json.dumps(answer, separators=(",", ":")).encode()


@lru_cache(maxsize=CACHE_SIZE)
def _recommendation(key: str) -> bytes:
    return _dumps(recommend(Profile.model_validate_json(key)))


@lru_cache(maxsize=CACHE_SIZE)
def _estimate(key: str) -> bytes:
    return _dumps(estimate_only(EstimateRequest.model_validate_json(key)))


def recommendation_json(profile: Profile) -> bytes:
    return _recommendation(profile.model_dump_json())


def estimate_json(request: EstimateRequest) -> bytes:
    return _estimate(request.model_dump_json())


# -- traced estimates -------------------------------------------------------------------


@cache
def _runner_for(cache_dir: str) -> TraceRunner:
    from pathlib import Path

    return TraceRunner(cache_dir=Path(cache_dir))


def get_trace_runner(settings: SettingsDep) -> TraceRunner:
    """One runner (and one memory cache) per data directory."""
    return _runner_for(str(settings.data_dir / "trace-cache"))


TraceRunnerDep = Annotated[TraceRunner, Depends(get_trace_runner)]


def trace_estimate(request: EstimateRequest, runner: TraceRunner) -> dict[str, Any]:
    """POST /v1/estimates with method "trace": the EstimateResponse shape, measured."""
    problems: list[Problem] = []
    card = None
    try:
        card = resolve_card(request.hardware, required=False) if request.hardware else None
    except InvalidInput as exc:
        problems += exc.problems
    try:
        model_name, arch = resolve_model(request.model)
    except InvalidInput as exc:
        problems += exc.problems
    try:
        combo = combination(request.variant, request.combine_with)
    except InvalidInput as exc:
        problems += exc.problems
    if card is not None and card.count > 1:
        problems.append(
            Problem(
                "hardware.gpu_count",
                "method 'trace' measures one card; set hardware.gpu_count to 1, or use method "
                "'analytic' for a model split over several cards",
                card.count,
            )
        )
    if problems:
        raise InvalidInput(problems)
    training, notes = effective_training(request.training, card)
    config = (
        find_model(request.model.name).config
        if request.model.name is not None
        else request.model.config
    )
    assert config is not None
    payload = request_payload(config, training.model_dump(), combo.variant, combo.combine_with)
    try:
        answer = runner.run(payload)
    except TraceFailed as exc:
        raise InvalidInput([Problem(exc.field, exc.message)]) from None
    out = dict(answer["estimate"])
    if card is not None:
        out["fits"] = out["total_gib"] <= card.memory_gib
        out["headroom_gib"] = round(card.memory_gib - out["total_gib"], 3)
    out["model"] = {"name": model_name, **arch.summary()}
    out["precision"] = training.precision
    trace = answer.get("trace", {})
    notes.append(
        "measured by tracing two training steps of this architecture on PyTorch's meta device "
        f"(peak in {trace.get('peak_phase', out['peak_phase'])}; attention kernels "
        f"{trace.get('attention_kernels', {})})"
    )
    out["notes"] = notes
    return out


def trace_estimate_json(request: EstimateRequest, runner: TraceRunner) -> bytes:
    return _dumps(trace_estimate(request, runner))
