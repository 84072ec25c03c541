"""The FastAPI application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

import loracle
from advisor.profile import Profile
from api import errors
from api.advice import endpoints as advice
from api.calibration.endpoints import router as calibration_router
from api.catalog.endpoints import router as catalog_router
from api.console import endpoints as console
from api.files.endpoints import router as files_router
from api.fleet.endpoints import router as fleet_router
from api.jobs import endpoints as jobs
from api.jobs.endpoints import router as jobs_router
from api.limits import BodyLimit
from api.schemas import error_responses
from api.security import configuration_problem, get_owner, require_worker
from api.tries.endpoints import router as tries_router
from api.webhooks.endpoints import router as webhooks_router
from api.worker_files.endpoints import router as worker_files_router
from loracle.dispatch import dispatch_pending
from loracle.queue import celery_for
from loracle.settings import Settings, get_settings
from loracle.webhooks import deliver_due

log = logging.getLogger("loracle.api")

DOCS_ASSETS = "/docs-assets"


async def _dispatcher(app: FastAPI) -> None:
    """Put queued jobs the broker never received (it was down at submission, or
    lost them) back on the broker, every few seconds."""
    while True:
        settings = app.state.settings
        try:
            queue = celery_for(settings.model_dump_json())
            await asyncio.to_thread(dispatch_pending, settings, queue)
        except Exception:  # the loop must outlive a bad round
            log.exception("dispatch round failed")
        await asyncio.sleep(settings.dispatch_interval_s)


async def _webhooks(app: FastAPI) -> None:
    """Send the webhook outbox (loracle.webhooks), every second: apart from the dispatcher,
    so that a slow endpoint never holds back jobs."""
    while True:
        settings = app.state.settings
        try:
            await asyncio.to_thread(deliver_due, settings)
        except Exception:  # the loop must outlive a bad round
            log.exception("webhook round failed")
        await asyncio.sleep(min(1.0, settings.webhook_retry_base_s))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = app.state.settings
    problem = configuration_problem(settings)
    if problem:
        raise RuntimeError(f"loracle cannot start: {problem}")
    settings.create_model_roots()
    if settings.auth_disabled:
        banner = (
            "AUTHENTICATION IS DISABLED (LORACLE_AUTH_DISABLED=1): anyone who can reach this "
            "server can read and create every job. Never expose it beyond this machine."
        )
        log.warning(banner)
        print(f"\n*** {banner} ***\n", file=sys.stderr, flush=True)
    tasks = [asyncio.create_task(_dispatcher(app)), asyncio.create_task(_webhooks(app))]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def document_models(app: FastAPI, *models: type[BaseModel]) -> None:
    """Register the schemas of request bodies that routes read themselves."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default()
            _, defs = models_json_schema(
                [(m, "validation") for m in models],
                ref_template="#/components/schemas/{model}",
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                defs.get("$defs", {})
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application, configured by ``settings`` (default: the LORACLE_* environment)."""
    # /docs and /redoc load Swagger UI and ReDoc from fastapi-offline's package data, served
    # here under DOCS_ASSETS: FastAPI's own pages fetch them (and Google Fonts) from a CDN,
    # so the docs were blank on a machine without internet. validatorUrl: Swagger UI would
    # otherwise send the schema to validator.swagger.io for a badge.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},
        lifespan=lifespan,
        title="loracle",
        version=loracle.__version__,
        description="Which LoRA variant to use on your hardware, whether it fits, and a "
        "service that runs the fine-tuning job.",
    )
    app.state.settings = settings or get_settings()
    errors.install(app)
    app.add_middleware(BodyLimit)
    # Every endpoint but /healthz (and the API's own documentation) needs a valid key.
    authenticated = [Depends(get_owner)]
    documented = error_responses(401, 413, 422)
    # /v1/recommendations checks the key itself (see its route); /v1/estimates by dependency.
    advice.install(app)
    routers = (catalog_router, files_router, fleet_router, calibration_router, webhooks_router)
    for router in routers:
        app.include_router(router, dependencies=authenticated, responses=documented)
    for router in (jobs_router, tries_router):
        app.include_router(
            router, prefix=jobs.PREFIX, dependencies=authenticated, responses=documented
        )
        app.include_router(
            router,
            prefix=jobs.ALIAS,
            dependencies=authenticated,
            responses=documented,
            include_in_schema=False,
        )
    # A remote worker's file transfers: a worker token, never an API key (api/worker_files).
    app.include_router(
        worker_files_router, dependencies=[Depends(require_worker)], responses=documented
    )
    document_models(app, Profile)
    # The web console's pages load without a key; their data calls carry one.
    console.install(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": loracle.__version__}

    return app


app = create_app()
