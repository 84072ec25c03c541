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
from typing import Annotated

from fastapi import Depends
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from advisor.decide import estimate_only, recommend
from advisor.profile import EstimateRequest, Profile
from api.deps import SettingsDep
from loracle.settings import Settings
from worker.memtrace.runner import TraceRunner, traced_estimate

CACHE_SIZE = 4096  # about 5 KB an answer: 20 MB at most


def _dumps(answer: dict[str, object]) -> bytes:
    # allow_nan=False: a NaN in an answer is a bug to see, never invalid JSON to send.
    return json.dumps(answer, separators=(",", ":"), allow_nan=False).encode()


@lru_cache(maxsize=CACHE_SIZE)
def _recommendation(key: str) -> bytes:
    return _dumps(recommend(Profile.model_validate_json(key)))


@lru_cache(maxsize=CACHE_SIZE)
def _estimate(key: str) -> bytes:
    return _dumps(estimate_only(EstimateRequest.model_validate_json(key)))


def recommendation_json(profile: Profile) -> bytes:
    return _recommendation(profile.model_dump_json())


@lru_cache(maxsize=CACHE_SIZE)
def recommendation_for_body(body: bytes) -> bytes:
    """The answer to a request body: validated with pydantic's JSON parser (an invalid body
    raises RequestValidationError, which is not cached), then answered through the cache
    of validated profiles, so equal profiles written differently share one answer."""
    try:
        profile = Profile.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        ) from None
    return recommendation_json(profile)


def estimate_json(request: EstimateRequest) -> bytes:
    return _estimate(request.model_dump_json())


# -- traced estimates -------------------------------------------------------------------


@cache
def _runner_for(cache_dir: str, timeout_s: float, concurrency: int) -> TraceRunner:
    from pathlib import Path

    return TraceRunner(cache_dir=Path(cache_dir), timeout_s=timeout_s, concurrency=concurrency)


def trace_runner(settings: Settings) -> TraceRunner:
    """One runner (and one memory cache) per data directory."""
    return _runner_for(
        str(settings.data_dir / "trace-cache"), settings.trace_timeout_s, settings.trace_concurrency
    )


async def get_trace_runner(settings: SettingsDep) -> TraceRunner:
    return trace_runner(settings)


TraceRunnerDep = Annotated[TraceRunner, Depends(get_trace_runner)]


def trace_estimate_json(request: EstimateRequest, runner: TraceRunner) -> bytes:
    return _dumps(traced_estimate(request, runner))
