from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class FileOut(BaseModel):
    id: str
    object: Literal["file"] = "file"
    filename: str
    purpose: str
    bytes: int = Field(description="Size of the upload in bytes.")
    rows: int = Field(description="Training examples (non-blank lines).")
    format: Literal["text", "prompt_completion", "messages", "json"] = Field(
        description="Rows' shape; 'json' for a job's result file (purpose fine-tune-results)."
    )
    sha256: str
    created_at: int = Field(description="Unix time, seconds.")
    token_stats: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Token lengths (min, median, max) per tokenizer of the jobs that used it.",
    )
    status: Literal["processed"] = Field(
        default="processed", description="OpenAI's: checked at upload, so always processed."
    )
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileOut]
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: Literal[True] = True
