"""The FastAPI application."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

import loracle
from api import errors
from api.advice.endpoints import router as advice_router
from api.catalog.endpoints import router as catalog_router


def create_app() -> FastAPI:
    app = FastAPI(
        title="loracle",
        version=loracle.__version__,
        description="Which LoRA variant to use on your hardware, whether it fits, and a "
        "service that runs the fine-tuning job.",
    )
    errors.install(app)
    app.include_router(advice_router)
    app.include_router(catalog_router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": loracle.__version__}

    return app


app = create_app()
