"""One error shape for every answer that is not a success.

Domain code raises domain exceptions (``advisor.errors``) that know nothing of
HTTP; the handlers here turn them, FastAPI's request validation errors and
HTTP errors into ``{"error", "detail", "problems"}`` with the right status.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from advisor.errors import InvalidInput, Problem, UnknownName

log = logging.getLogger("loracle.api")


class ApiError(Exception):
    """An answer with a status, a code and a message; raised by services."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        problems: Sequence[Problem] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.problems = list(problems)
        self.headers = headers


def _value(value: Any) -> Any:
    """The offending value as JSON can carry it (raw bytes need not be UTF-8)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value[:300]).decode("utf-8", errors="replace")
    try:
        return jsonable_encoder(value)
    except (TypeError, ValueError):
        return repr(value)[:300]


def _body(error: str, detail: str, problems: Iterable[Problem] = ()) -> dict[str, Any]:
    return {
        "error": error,
        "detail": detail,
        "problems": [
            {"field": p.field, "message": p.message, "value": _value(p.value)} for p in problems
        ],
    }


def error_response(
    status: int,
    error: str,
    detail: str,
    problems: Iterable[Problem] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(_body(error, detail, problems), status_code=status, headers=headers)


def _field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "form"):
        parts = parts[1:] or parts
    # Union branches add their type names to the location: drop them.
    parts = [p for p in parts if not p.startswith(("literal[", "list[", "function-"))]
    return ".".join(parts) or "body"


def _problem(err: dict[str, Any]) -> Problem:
    kind = err.get("type", "")
    msg = str(err.get("msg", "is invalid"))
    field = _field(err.get("loc", ()))
    value = err.get("input")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind == "missing":
        msg = "is required; add it to the request"
    elif kind == "extra_forbidden":
        msg = "is not a known field; remove it or check its spelling"
    elif kind == "json_invalid":
        field = "body"
        ctx = err.get("ctx") or {}
        msg = f"is not valid JSON ({ctx.get('error', 'parse error')}); send a JSON object"
    else:
        msg = f"{msg[0].lower()}{msg[1:]}" if msg else msg
        if value is not None and kind not in ("model_type", "dict_type"):
            msg = f"{msg} (got {_value(value)!r})"
    return Problem(field, msg, value if kind not in ("missing",) else None)


def install(app: FastAPI) -> None:
    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        code = "unknown_name" if isinstance(exc, UnknownName) else "invalid_request"
        return error_response(422, code, exc.summary(), exc.problems)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_problem(dict(e)) for e in exc.errors()]
        return error_response(422, "invalid_request", "; ".join(str(p) for p in problems), problems)

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.problems, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's and Starlette's answers to a body they cannot decode (bad UTF-8,
            # broken multipart): one 422 shape like every other bad input.
            problem = Problem(
                "body",
                f"could not be parsed ({exc.detail}); send UTF-8 JSON, or for uploads "
                "multipart/form-data with a 'file' part and a 'purpose' field",
            )
            return error_response(422, "invalid_request", str(problem), [problem])
        codes = {
            401: "unauthorized",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; see /docs for the API"
        return error_response(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            detail,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            "internal_error",
            "the server failed on this request; it has been logged. Retry, or report it "
            "with the request body",
        )
