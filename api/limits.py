"""Request body limits, enforced while the body streams in.

An upload larger than ``LORACLE_MAX_UPLOAD_BYTES`` gets a 413 before its body is
read whole: at once when ``Content-Length`` says so, and as soon as the running
count passes the limit for a chunked body that declares no length. Every other
request body is held to 1 MiB (a job or a profile is a few KiB).

An upload without a valid API key gets its 401 before any of its body is read: FastAPI
parses a form before it runs the route's dependencies, so the route's own key check
would come only after the whole upload was spooled to disk. The check is the routes' own
(``api.security.key_owner``), run here on the headers alone. The same holds for a remote
worker's checkpoint and adapter uploads under ``/v1/worker/``: their worker token is
checked first, and their limit is ``LORACLE_MAX_ARTIFACT_BYTES``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_body, error_response, is_openai_path
from api.security import check_worker_token, key_owner

UPLOAD_PATH = "/v1/files"
WORKER_PREFIX = "/v1/worker/"
# Multipart framing around the file: boundaries, part headers, the purpose field.
MULTIPART_SLACK = 64 * 1024
JSON_BODY_LIMIT = 1 << 20


class _TooLarge(HTTPException):
    """Raised from inside the body stream. An HTTPException, because FastAPI turns any
    other exception met while parsing a body into a 400; this one it lets through to
    the error handler, which answers 413 in the common error shape."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


class BodyLimit:
    """The limits of the app's own settings (``create_app(settings)``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        upload = scope["path"] == UPLOAD_PATH
        worker = scope["path"].startswith(WORKER_PREFIX)
        if upload or worker:
            check = check_worker_token if worker else key_owner
            try:
                check(Headers(scope=scope).get("authorization", ""), _settings(scope))
            except ApiError as exc:
                # "Connection: close": the server drops the connection rather than read
                # the unread body to reach the next request on it.
                headers = {**(exc.headers or {}), "Connection": "close"}
                response = error_response(
                    exc.status, exc.error, exc.detail, headers=headers, path=scope["path"]
                )
                await response(scope, receive, send)
                return
        max_upload = _settings(scope).max_upload_bytes
        limit = max_upload + MULTIPART_SLACK if upload else JSON_BODY_LIMIT
        what = (
            f"upload larger than the limit of {max_upload} bytes; split the data or "
            "raise LORACLE_MAX_UPLOAD_BYTES"
            if upload
            else f"request body larger than {JSON_BODY_LIMIT} bytes"
        )
        if worker:
            limit = _settings(scope).max_artifact_bytes
            what = (
                f"upload larger than LORACLE_MAX_ARTIFACT_BYTES={limit} bytes; raise it on the API"
            )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > limit:
                await _reject(send, what, scope["path"])
                return
            # The HTTP server frames the body by its Content-Length: the app never
            # receives more than declared, so there is nothing left to count.
            await self.app(scope, receive, send)
            return

        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(what)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:  # raised outside FastAPI's body parsing
            if not started:
                await _reject(send, what, scope["path"])


def _settings(scope: Scope) -> Any:
    """The settings the app was built with, as the routes see them (``app_settings``)."""
    return scope["app"].state.settings


async def _reject(send: Send, detail: str, path: str) -> None:
    body = error_body(413, "payload_too_large", detail, (), is_openai_path(path))
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
