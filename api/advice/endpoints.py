"""POST /v1/recommendations and POST /v1/estimates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from advisor.decide import estimate_only, recommend
from advisor.profile import EstimateRequest, Profile
from api.advice.schemas import EstimateResponse, RecommendationOut
from api.schemas import error_responses

router = APIRouter(prefix="/v1", tags=["advice"])


@router.post(
    "/recommendations",
    response_model=RecommendationOut,
    responses=error_responses(422),
    summary="Which LoRA variant to use, whether it fits, and with what settings",
)
def create_recommendation(profile: Profile) -> Any:
    return recommend(profile)


@router.post(
    "/estimates",
    response_model=EstimateResponse,
    responses=error_responses(422),
    summary="GPU memory of one variant (or combination) for a model and training settings",
)
def create_estimate(request: EstimateRequest) -> Any:
    return estimate_only(request)
