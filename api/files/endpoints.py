"""POST /v1/files, GET /v1/files, GET /v1/files/{id}."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, UploadFile
from fastapi.responses import JSONResponse

from api import idempotency
from api.deps import DbDep, OwnerDep, SettingsDep
from api.errors import ApiError
from api.files.schemas import FileList, FileOut
from api.files.service import file_out, save_upload
from api.schemas import error_responses
from loracle.store import jobs as store

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post(
    "",
    status_code=201,
    response_model=FileOut,
    responses={
        200: {"model": FileOut, "description": "Replay of an Idempotency-Key"},
        **error_responses(413, 422),
    },
    summary="Upload a JSONL training file (multipart: file, purpose=fine-tune)",
)
async def upload_file(
    s: DbDep,
    settings: SettingsDep,
    owner: OwnerDep,
    file: Annotated[
        UploadFile, File(description="JSONL: text, prompt/completion or messages rows")
    ],
    purpose: Annotated[str, Form(description="Must be 'fine-tune'.")],
    idempotency_key: Annotated[
        str | None,
        Header(alias=idempotency.HEADER, description="The same key and file return the same id."),
    ] = None,
) -> Any:
    key = idempotency.validate(idempotency_key)
    row, created = await save_upload(s, settings, file, purpose, owner, key)
    if not created:
        return JSONResponse(file_out(row), status_code=200)
    return file_out(row)


@router.get("", response_model=FileList)
def list_files(s: DbDep, owner: OwnerDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
    return {"object": "list", "data": [file_out(r) for r in store.list_files(s, owner, limit)]}


@router.get("/{file_id}", response_model=FileOut, responses=error_responses(404))
def get_file(s: DbDep, owner: OwnerDep, file_id: str) -> Any:
    row = store.get_file(s, file_id, owner)
    if row is None:
        raise ApiError(404, "not_found", f"no file {file_id!r}")
    return file_out(row)
