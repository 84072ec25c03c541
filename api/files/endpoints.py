"""/v1/files: upload, list, retrieve, content and delete (OpenAI's files API)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse

from advisor.errors import Problem
from api import idempotency
from api.deps import DbDep, OwnerDep, SettingsDep
from api.errors import ApiError
from api.files.schemas import FileDeleted, FileList, FileOut
from api.files.service import content_path, file_out, save_upload
from api.schemas import error_responses
from loracle.store import jobs as store
from loracle.store.models import FileRow

router = APIRouter(prefix="/v1/files", tags=["files"])

FORM_FIELDS = {"file": "the JSONL file, as a file part", "purpose": "the text 'fine-tune'"}
_HOW = "send `-F file=@train.jsonl -F purpose=fine-tune`"


async def strict_form(request: Request) -> None:
    """The upload's form as strictly as a JSON body: only `file` (a file part) and `purpose`
    (a text field), each once. Without it a misspelt or extra field was ignored, a second file
    silently replaced the first, and a wrong kind of part got pydantic's words for Python
    types. Runs before the parameters are checked; the form is the one FastAPI parsed."""
    form = await request.form()
    problems = []
    for key in dict.fromkeys(form.keys()):
        values = form.getlist(key)
        if key not in FORM_FIELDS:
            problems.append(Problem(key, f"is not a field of an upload; remove it ({_HOW})", None))
        elif len(values) > 1:
            fix = "upload one file per request" if key == "file" else "give it once"
            problems.append(Problem(key, f"is given {len(values)} times; {fix}", None))
        elif (key == "file") == isinstance(values[0], str):
            kind = "a text field" if key == "file" else "a file"
            problems.append(Problem(key, f"must be {FORM_FIELDS[key]}, not {kind}; {_HOW}", None))
    if problems:
        raise ApiError(422, "invalid_request", "; ".join(str(p) for p in problems), problems)


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
    _: Annotated[None, Depends(strict_form)],
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
def list_files(
    s: DbDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    after: Annotated[
        str | None, Query(max_length=64, description="Last file id of the previous page.")
    ] = None,
    purpose: Annotated[
        str | None, Query(max_length=64, description="Only files of this purpose.")
    ] = None,
    order: Annotated[Literal["desc"], Query(description="Newest first.")] = "desc",
) -> Any:
    page = store.list_files(s, owner, limit, after, purpose)
    if page is None:
        raise ApiError(
            422,
            "invalid_request",
            f"after: no file {after!r}; pass an id from a previous page",
            [Problem("after", "is not one of your files; pass an id from a previous page", after)],
        )
    rows, more = page
    return {"object": "list", "data": [file_out(r) for r in rows], "has_more": more}


def _file(s: DbDep, owner: str | None, file_id: str) -> FileRow:
    row = store.get_file(s, file_id, owner)
    if row is None:
        raise ApiError(404, "not_found", f"no file {file_id!r}; list yours with GET /v1/files")
    return row


@router.get("/{file_id}", response_model=FileOut, responses=error_responses(404))
def get_file(s: DbDep, owner: OwnerDep, file_id: str) -> Any:
    return file_out(_file(s, owner, file_id))


@router.get(
    "/{file_id}/content",
    response_class=FileResponse,
    responses=error_responses(404),
    summary="The file's bytes, as uploaded (or as the job wrote them, for results)",
)
def file_content(s: DbDep, owner: OwnerDep, settings: SettingsDep, file_id: str) -> Any:
    row = _file(s, owner, file_id)
    return FileResponse(content_path(settings, row), filename=row.filename)


@router.delete("/{file_id}", response_model=FileDeleted, responses=error_responses(404, 409))
def delete_file(s: DbDep, owner: OwnerDep, settings: SettingsDep, file_id: str) -> Any:
    """Deletes the bytes; refused while a queued or running job will read the file. The jobs
    that used it keep naming it."""
    row = _file(s, owner, file_id)
    using = store.jobs_using_file(s, file_id)
    if using:
        raise ApiError(
            409,
            "file_in_use",
            f"file {file_id} is used by {', '.join(using)}, queued or running; cancel the job "
            "or wait until it ends, then delete the file",
        )
    path = content_path(settings, row, must_exist=False)
    store.delete_file(s, row)
    s.commit()
    if row.purpose != store.RESULTS_PURPOSE:  # a job's artifact stays with the job
        path.unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}
