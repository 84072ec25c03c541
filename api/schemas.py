"""Shapes shared by every area of the API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ProblemOut(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. 'training.seq_len'.")
    message: str = Field(description="What is wrong and how to fix it.")
    value: Any = None


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer has this shape."""

    error: str = Field(description="A stable machine-readable code, e.g. 'invalid_request'.")
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
