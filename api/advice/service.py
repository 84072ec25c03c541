"""Answers of the advice endpoints, serialised once per distinct request.

Recommendations and estimates are pure functions of the validated request (the
catalogs and the memory model are fixed for a running process), and many users
ask about the same popular model and card. A bounded LRU of serialised answers
turns a repeated question into a dictionary lookup.
"""

from __future__ import annotations

import json
from functools import lru_cache

from advisor.decide import estimate_only, recommend
from advisor.profile import EstimateRequest, Profile

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
