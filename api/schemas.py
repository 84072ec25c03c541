"""Shapes shared by every area of the API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ProblemOut(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. 'training.seq_len'.")
    message: str = Field(description="What is wrong and how to fix it.")
    value: Any = None


class OpenAIErrorOut(BaseModel):
    """OpenAI's error object, on /v1/files and /v1/fine_tuning."""

    message: str
    type: str = Field(description="invalid_request_error, authentication_error, server_error.")
    param: str | None = Field(description="The first field at fault, if any.")
    code: str = Field(description="loracle's machine-readable code, e.g. 'invalid_request'.")


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer has this shape."""

    error: str | OpenAIErrorOut = Field(
        description="A stable machine-readable code, e.g. 'invalid_request'; on OpenAI's "
        "paths (/v1/files, /v1/fine_tuning) OpenAI's error object, whose `code` is that code."
    )
    detail: str = Field(description="A human-readable summary naming the field and the fix.")
    problems: list[ProblemOut] = Field(default_factory=list)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route may give."""
    return {code: {"model": ErrorOut} for code in codes}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body of a route that reads its JSON itself; the model's schema is
    registered under components by ``api.main`` (``document_models``)."""
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
        },
    }
