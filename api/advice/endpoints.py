"""POST /v1/recommendations and POST /v1/estimates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from advisor.profile import EstimateRequest, Profile
from api.advice import service
from api.advice.schemas import EstimateAnswer, Recommendation
from api.schemas import error_responses, request_body
from api.security import BEARER_SECURITY, check_key, get_owner

router = APIRouter(prefix="/v1", tags=["advice"], responses=error_responses(401, 413, 422))


def install(app: FastAPI) -> None:
    """Add the advice routes to ``app``; call it before any other router is included.

    POST /v1/recommendations goes on the app itself, as its first route: a request is
    matched against the routes in order, and an included router adds a second matching
    pass of its own. Matched after every other route, inside an included router, the
    hottest route spent more time being found than answering a repeated question
    (bench/advice.py). It has no dependencies, so nothing is lost by not including it.
    POST /v1/estimates has dependencies that tests override, and is included as usual.
    """
    app.add_api_route(
        "/v1/recommendations",
        create_recommendation,
        methods=["POST"],
        tags=["advice"],
        response_model=Recommendation,
        responses=error_responses(401, 413, 422),
        summary="Which LoRA variant to use, whether it fits, and with what settings",
        openapi_extra={"requestBody": request_body(Profile), "security": BEARER_SECURITY},
    )
    app.include_router(router)


# The advisor builds plain JSON-ready dicts whose shape the response models
# document (tests check answers against the OpenAPI schema); returning the
# serialised bytes skips a second validation pass that cost more than the advice.


async def create_recommendation(request: Request) -> Any:
    # The hottest route, so it skips FastAPI's body and dependency machinery (about 0.3 ms
    # a request, most of the cost of a repeated question): it checks the key itself,
    # answers a body it has seen from a cache keyed by the bytes, and validates anything
    # new with pydantic's JSON parser, failing as every other route does.
    check_key(request, request.app.state.settings)
    body = await request.body()
    return Response(service.recommendation_for_body(body), media_type="application/json")


@router.post(
    "/estimates",
    dependencies=[Depends(get_owner)],
    response_model=EstimateAnswer,
    responses=error_responses(422),
    summary="GPU memory of one variant (or combination) for a model and training settings",
)
async def create_estimate(request: EstimateRequest, runner: service.TraceRunnerDep) -> Any:
    if request.method == "trace":
        # Seconds in a subprocess (cached afterwards): off the event loop.
        body = await run_in_threadpool(service.trace_estimate_json, request, runner)
        return Response(body, media_type="application/json")
    return Response(service.estimate_json(request), media_type="application/json")
