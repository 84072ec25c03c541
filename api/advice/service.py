"""Answers of the advice endpoints, serialised once per distinct request.

Recommendations and analytic estimates are pure functions of the validated request (the
catalogs and the memory model are fixed for a running process), and many users ask about
the same popular model and card. A bounded LRU of serialised answers turns a repeated
question into a dictionary lookup.

Traced estimates (`method: "trace"`) need torch: `TraceRunner` runs `python -m memtrace`
in a subprocess with a time limit and caches its answers in memory and under
`$LORACLE_DATA_DIR/trace-cache/`, keyed by the request and the versions of torch,
transformers, peft and bitsandbytes. A trace that fails or overruns answers 422 naming the
field to change.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import cache
from typing import Annotated

from fastapi import Depends
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from advisor.decide import estimate_only, recommend
from advisor.profile import EstimateRequest, Profile
from api.deps import SettingsDep
from loracle.settings import Settings
from memtrace.runner import TraceRunner, traced_estimate

# A bound in bytes, not entries: an answer is 5-8 KB, but a request may be up to the body
# limit (model.config accepts any keys), and caches keyed by the raw request could hold
# 4096 of those. Keys are SHA-256 digests of the request, 32 bytes whatever its size.
CACHE_BYTES = 32 << 20


class AnswerCache:
    """Serialised answers, least recently used first out, keyed by the SHA-256 of what
    they answer and bounded by the bytes they hold."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._answers: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()  # estimates are answered on the thread pool

    def get(self, request: bytes, compute: Callable[[], bytes]) -> bytes:
        key = hashlib.sha256(request).digest()
        with self._lock:
            answer = self._answers.get(key)
            if answer is not None:
                self._answers.move_to_end(key)
                return answer
        answer = compute()  # outside the lock: two threads may compute one answer twice
        if len(answer) > self.max_bytes:
            return answer
        with self._lock:
            if key not in self._answers:
                self._answers[key] = answer
                self.bytes += len(answer)
            while self.bytes > self.max_bytes:
                _, dropped = self._answers.popitem(last=False)
                self.bytes -= len(dropped)
        return answer

    def __len__(self) -> int:
        return len(self._answers)


_recommendations = AnswerCache()  # by validated profile
_bodies = AnswerCache()  # by raw request body, in front of the one above
_estimates = AnswerCache()


def recommendation_json(profile: Profile) -> bytes:
    key = profile.model_dump_json().encode()
    return _recommendations.get(key, lambda: recommend(profile).model_dump_json().encode())


def _recommendation_of_body(body: bytes) -> bytes:
    try:
        profile = Profile.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        ) from None
    return recommendation_json(profile)


def recommendation_for_body(body: bytes) -> bytes:
    """The answer to a request body: validated with pydantic's JSON parser (an invalid body
    raises RequestValidationError, which is not cached), then answered through the cache
    of validated profiles, so equal profiles written differently share one answer."""
    return _bodies.get(body, lambda: _recommendation_of_body(body))


def estimate_json(request: EstimateRequest) -> bytes:
    key = request.model_dump_json().encode()
    return _estimates.get(key, lambda: estimate_only(request).model_dump_json().encode())


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
    return traced_estimate(request, runner).model_dump_json().encode()
