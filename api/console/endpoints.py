"""The web console: pages at /, and their assets at /console/static.

A page is a Jinja template plus a JavaScript module. The server renders only what it knows
without a key (navigation, form fields drawn from the request models, the advisor's tree);
every piece of data comes from /v1 through the same REST API clients use, sent with the API
key the browser keeps in session storage. So the pages need no key to load, and nothing on
them is served that the key's owner could not fetch with curl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.types import Scope

import loracle
from advisor.decide import FIT_QUESTION, QUESTIONS
from advisor.profile import Goal, TrainingSettings
from advisor.variants import MEMORY_VARIANT, VARIANT_NAMES, VARIANTS
from api.console.forms import field_dicts
from api.jobs.schemas import Hyperparameters, JobStatus
from loracle.plan import TrainingPlan

HERE = Path(__file__).parent
STATIC_URL = "/console/static"
templates = Jinja2Templates(directory=HERE / "templates")

# Pages run only the scripts and styles served from here, and talk only to this origin:
# an injected script could otherwise read the API key from session storage.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

NAV = (("/", "Advisor"), ("/data", "Data"), ("/jobs", "Jobs"), ("/fleet", "Fleet"))

router = APIRouter(include_in_schema=False)


class _Assets(StaticFiles):
    """Static files that a browser revalidates (a 304 when unchanged), so an upgraded
    server's modules are never mixed with a cached older one's."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(STATIC_URL, _Assets(directory=HERE / "static"), name="console-static")


def variants() -> dict[str, Any]:
    """Titles of the variants, and the combinations a recommendation can answer: the memory
    variant keeping the idea of a variant the tree chose that does not fit (see
    advisor/decide.py)."""
    quantized = [MEMORY_VARIANT]
    ideas = [
        q.decides
        for q in QUESTIONS
        if VARIANTS[q.decides].idea is not None and q.decides != MEMORY_VARIANT
    ]
    return {
        "names": list(VARIANT_NAMES),
        "titles": {v: VARIANTS[v].title for v in VARIANT_NAMES},
        "summaries": {v: VARIANTS[v].summary for v in VARIANT_NAMES},
        "combinations": [[q, [idea]] for q in quantized for idea in ideas],
    }


def _tree() -> dict[str, Any]:
    return {
        "tree": [{"question": q.text, "yes": q.decides} for q in QUESTIONS],
        "fit_question": FIT_QUESTION,
    }


def _current(path: str) -> str | None:
    """The navigation entry a path belongs to (/jobs/job-1 is under Jobs)."""
    for href, _ in NAV:
        if path == href or (href != "/" and path.startswith(href + "/")):
            return href
    return None


def _page(request: Request, template: str, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(
        request,
        template,
        {
            "nav": NAV,
            "current": _current(request.url.path),
            "static": STATIC_URL,
            "version": loracle.__version__,
            **context,
        },
    )
    response.headers.update(SECURITY_HEADERS)
    return response


@router.get("/", response_class=HTMLResponse)
def advisor_page(request: Request) -> HTMLResponse:
    return _page(
        request,
        "advisor.html",
        title="Advisor",
        data={
            "training": field_dicts(TrainingSettings),
            "goal": field_dicts(Goal),
            "variants": variants(),
            **_tree(),
        },
    )


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_page(request: Request) -> HTMLResponse:
    return _page(request, "sign_in.html", title="Sign in", data={}, public=True)


@router.get("/data", response_class=HTMLResponse)
def data_page(request: Request) -> HTMLResponse:
    return _page(request, "data.html", title="Data", data={})


def _statuses() -> list[str]:
    return list(get_args(JobStatus))


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    return _page(
        request,
        "jobs.html",
        title="Jobs",
        data={"statuses": _statuses(), "variants": variants()},
    )


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job_page(request: Request) -> HTMLResponse:
    return _page(
        request,
        "new_job.html",
        title="New job",
        data={
            "hyperparameters": field_dicts(Hyperparameters, TrainingPlan),
            "goal": field_dicts(Goal),
            "variants": variants(),
        },
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    return _page(
        request,
        "job.html",
        title=f"Job {job_id}",
        data={
            "job_id": job_id,
            "variants": variants(),
            **_tree(),
        },
    )


@router.get("/fleet", response_class=HTMLResponse)
def fleet_page(request: Request) -> HTMLResponse:
    return _page(
        request,
        "fleet.html",
        title="Fleet",
        data={"statuses": _statuses(), "variants": variants()},
    )
