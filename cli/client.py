"""A small client of loracle's REST API for the job commands (``loracle files``, ``jobs``,
``demo``): the base URL from ``--url``/``LORACLE_URL``, the key from
``--api-key``/``LORACLE_API_KEY``. The commands never open the job store themselves: what
they show is what any other client of the API would get.

Failures become `ApiFailure` (the API's ``{"error", "detail", "problems"}``) or, when the
service cannot be reached, a message naming the URL and how to change it; `fail` prints
either with the command's flags in place of the API's field names and exits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from cli.options import FieldMap

err = Console(stderr=True)

# Reads of a live event stream wait this long for the next line; the server sends a
# keep-alive comment every 15 s of silence, so a longer gap means the connection is gone.
STREAM_READ_S = 60.0


class ApiFailure(Exception):
    """A non-2xx answer of the API, or no answer at all (status 0)."""

    def __init__(
        self, status: int, error: str, detail: str, problems: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.problems = problems or []


def _failure(response: httpx.Response) -> ApiFailure:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return ApiFailure(response.status_code, "http_error", response.text[:300] or "no body")
    error = body.get("error", "http_error")
    if isinstance(error, dict):  # OpenAI's shape, on /v1/files and /v1/fine_tuning
        error = error.get("code") or error.get("type") or "http_error"
    return ApiFailure(
        response.status_code,
        str(error),
        str(body.get("detail", "")),
        [p for p in body.get("problems") or [] if isinstance(p, dict)],
    )


class Client:
    def __init__(self, url: str, api_key: str | None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise _failure(response)
        return response

    def _unreachable(self, exc: Exception) -> ApiFailure:
        return ApiFailure(
            0,
            "unreachable",
            f"cannot reach loracle at {self.url} ({exc.__class__.__name__}: {exc}); start it "
            "with `loracle up` (or `make run`), or point --url / LORACLE_URL at it",
        )

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self._send("GET", path, params=clean).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        return self._send("POST", path, **kwargs).json()

    @contextmanager
    def stream(self, path: str, **params: Any) -> Iterator[httpx.Response]:
        """A streamed GET (an event stream, a download), checked before it is read."""
        timeout = httpx.Timeout(30.0, read=STREAM_READ_S)
        clean = {k: v for k, v in params.items() if v is not None}
        try:
            with self.http.stream("GET", path, params=clean, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _failure(response)
                yield response
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None


def ask(
    url: str,
    api_key: str | None,
    path: str,
    *,
    post: bool = False,
    fields: FieldMap | None = None,
    ctx: typer.Context | None = None,
    **params: Any,
) -> Any:
    """One call of the API for a command (a GET with ``params``, or a POST): its JSON
    answer; a failure is printed (`fail`) and the command exits."""
    with Client(url, api_key) as client:
        try:
            return client.post(path) if post else client.get(path, **params)
        except ApiFailure as exc:
            fail(exc, fields, ctx)


def print_json(answer: Any) -> None:
    """What --json prints: the API's answer, as it came."""
    print(json.dumps(answer, indent=2))


def events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, data) of each server-sent event; the name is ``message`` unless the
    server set one (``end``). Comments (keep-alives) and ``retry:`` lines are skipped."""
    name, data = "message", list[str]()
    for line in response.iter_lines():
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            name = line[6:].strip()


def fail(
    exc: ApiFailure, fields: FieldMap | None = None, ctx: typer.Context | None = None
) -> NoReturn:
    """Print the failure, each problem under the flag of command ``ctx`` that gives its
    field, and exit: 2 for a request the API refused as invalid (like a usage error), 1
    otherwise."""
    if exc.status == 401:
        say_error(
            f"{exc.detail}: pass the key with --api-key or LORACLE_API_KEY "
            "(`loracle keys create` makes a new one on the server's machine)"
        )
        raise typer.Exit(1)

    def say(text: str) -> str:
        return fields.say(text, ctx) if fields and ctx else text

    if exc.problems:
        for p in exc.problems:
            field = str(p.get("field", ""))
            where = fields.flag(field, ctx) if fields and ctx else field
            say_error(f"{where}: {say(str(p.get('message', '')))}")
    else:
        say_error(say(exc.detail))
    raise typer.Exit(2 if exc.status == 422 else 1)


def say_error(text: str) -> None:
    """One error line on stderr, as written: no markup read from it, no wrapping."""
    err.print(f"[red]error[/red] {escape(text)}", soft_wrap=True)
