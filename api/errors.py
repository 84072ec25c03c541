"""One error shape for every answer that is not a success.

Domain code raises domain exceptions (``advisor.errors``) that know nothing of
HTTP; the handlers here turn them, FastAPI's request validation errors and
HTTP errors into ``{"error", "detail", "problems"}`` with the right status.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from advisor.errors import InvalidInput, Problem, UnknownName
from loracle.hub import HUB_UNREACHABLE, HubError

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


# How much of an offending value an error answer echoes: enough to recognise it.
_MAX_DEPTH = 8
_MAX_ITEMS = 20
_MAX_CHARS = 300


def _json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as strict JSON can carry it, and small: non-finite floats (JSON has no NaN
    or Infinity, and the response encoder refuses them) and integers too long to print
    become strings; deep or long containers and long strings are cut."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # str() refuses integers of more than 4300 digits (sys.int_info)
        if value.bit_length() > 128:
            return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value if len(value) <= _MAX_CHARS else value[:_MAX_CHARS] + "..."
    if isinstance(value, bytes | bytearray):
        return bytes(value[:_MAX_CHARS]).decode("utf-8", errors="replace")
    if depth >= _MAX_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        items = list(value.items())
        out = {str(k)[:_MAX_CHARS]: _json_safe(v, depth + 1) for k, v in items[:_MAX_ITEMS]}
        if len(items) > _MAX_ITEMS:
            out["..."] = f"{len(items) - _MAX_ITEMS} more keys"
        return out
    if isinstance(value, list | tuple | set | frozenset):
        seq = list(value)
        head = [_json_safe(v, depth + 1) for v in seq[:_MAX_ITEMS]]
        return head + ([f"... {len(seq) - _MAX_ITEMS} more"] if len(seq) > _MAX_ITEMS else [])
    try:
        return _json_safe(jsonable_encoder(value), depth + 1)
    except (TypeError, ValueError, RecursionError):
        return object.__repr__(value)


def _value(value: Any) -> Any:
    """The offending value as JSON can carry it (raw bytes need not be UTF-8; NaN becomes
    the string 'nan')."""
    return _json_safe(value)


# OpenAI's paths answer errors in OpenAI's shape, so that the openai SDK reads them:
# {"error": {"message", "type", "param", "code"}}, with loracle's `detail` and `problems`
# beside it. Every other path keeps {"error": <code>, "detail", "problems"}.
OPENAI_PATHS = ("/v1/fine_tuning/", "/v1/files")
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PATHS)


def error_body(
    status: int, error: str, detail: str, problems: Iterable[Problem] = (), openai: bool = False
) -> dict[str, Any]:
    listed = [{"field": p.field, "message": p.message, "value": _value(p.value)} for p in problems]
    if not openai:
        return {"error": error, "detail": detail, "problems": listed}
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    param = listed[0]["field"] if listed else None
    return {
        "error": {"message": detail, "type": kind, "param": param, "code": error},
        "detail": detail,
        "problems": listed,
    }


def error_response(
    status: int,
    error: str,
    detail: str,
    problems: Iterable[Problem] = (),
    headers: dict[str, str] | None = None,
    path: str = "",
) -> JSONResponse:
    body = error_body(status, error, detail, problems, is_openai_path(path))
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "form"):
        parts = parts[1:] or parts
    # Union branches add their type names to the location: drop them.
    parts = [p for p in parts if not p.startswith(("literal[", "list[", "dict[", "function-"))]
    while len(parts) > 1 and parts[-1] in ("int", "float", "str", "bool"):
        parts.pop()  # the branch of `int | Literal["auto"]` that was tried
    return ".".join(parts) or "body"


# pydantic's words for a wrong JSON type, said as the fix. The request models are strict
# (advisor.profile._Strict): nothing is coerced, so the type itself is the fix.
_TYPE_FIXES = {
    "int_type": "must be a JSON integer such as 2048: no quotes, no fraction, not true/false",
    "bool_type": "must be true or false, a JSON boolean without quotes",
    "float_type": "must be a JSON number such as 24 or 23.6, without quotes",
    "string_type": "must be a JSON string, in quotes",
    "finite_number": "must be a finite number; JSON has no NaN or Infinity",
    "dict_type": 'must be a JSON object such as {"key": "value"}',
}


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
        msg = _TYPE_FIXES.get(kind) or (f"{msg[0].lower()}{msg[1:]}" if msg else msg)
        if value is not None and kind not in ("model_type", "dict_type"):
            shown = repr(_value(value))
            msg = f"{msg} (got {shown if len(shown) <= 120 else shown[:117] + '...'})"
    return Problem(field, msg, value if kind not in ("missing",) else None)


def install(app: FastAPI) -> None:
    @app.exception_handler(InvalidInput)
    async def _invalid(request: Request, exc: InvalidInput) -> JSONResponse:
        code = "unknown_name" if isinstance(exc, UnknownName) else "invalid_request"
        return error_response(422, code, exc.summary(), exc.problems, path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_problem(dict(e)) for e in exc.errors()]
        detail = "; ".join(str(p) for p in problems)
        return error_response(422, "invalid_request", detail, problems, path=request.url.path)

    @app.exception_handler(HubError)
    async def _hub(request: Request, exc: HubError) -> JSONResponse:
        # Unreachable is the server's trouble and may pass (503, with when to retry); every
        # other code is about the model named, which a retry cannot change (422).
        unreachable = exc.code == HUB_UNREACHABLE
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        problem = Problem("model", str(exc), exc.repo_id)
        return error_response(
            503 if unreachable else 422,
            exc.code,
            f"model: {exc}",
            [problem],
            headers,
            path=request.url.path,
        )

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            exc.status, exc.error, exc.detail, exc.problems, exc.headers, path=request.url.path
        )

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
            return error_response(
                422, "invalid_request", str(problem), [problem], path=request.url.path
            )
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
            path=request.url.path,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            "internal_error",
            "the server failed on this request; it has been logged. Retry, or report it "
            "with the request body",
            path=request.url.path,
        )
