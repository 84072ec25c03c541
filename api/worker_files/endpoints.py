"""/v1/worker/jobs/{job_id}/...: a remote worker's file transfers (see service.py).

Every route needs a worker token (not an API key) and the job's current fencing token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from api.deps import DbDep, SettingsDep
from api.schemas import error_responses
from api.worker_files import service
from api.worker_files.service import FENCING_HEADER, SHA256_HEADER, STEP_HEADER

router = APIRouter(prefix="/v1/worker/jobs/{job_id}", tags=["worker files"])

FencingDep = Annotated[
    int,
    Header(
        alias=FENCING_HEADER,
        ge=0,
        description="The fencing token the worker got with the job's lease.",
    ),
]
Sha256Dep = Annotated[
    str | None,
    Header(alias=SHA256_HEADER, description="SHA-256 hex digest of the whole body."),
]
BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
# The body is a tar (loracle.filestore.pack), sent as plain bytes.
TAR_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": BINARY}}
UPLOADED = {"type": "object", "properties": {"published": {"type": "string"}}}
UPLOADED_RESPONSE: dict[int | str, dict[str, Any]] = {
    201: {"content": {"application/json": {"schema": UPLOADED}}}
}


@router.get(
    "/files/{file_id}",
    response_class=FileResponse,
    responses={200: {"content": BINARY}, **error_responses(404, 409)},
    summary="A job's training or validation file, with its sha256 in X-Loracle-Sha256",
)
def get_file(job_id: str, file_id: str, fencing: FencingDep, s: DbDep) -> Any:
    job = service.leased_job(s, job_id, fencing)
    row = service.job_file(s, job, file_id)
    return FileResponse(
        row.path, media_type="application/octet-stream", headers={SHA256_HEADER: row.sha256}
    )


@router.get(
    "/checkpoints/latest",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/x-tar": {}}, "description": "The checkpoint as a tar"},
        204: {"description": "No published checkpoint newer than `after`"},
        **error_responses(404, 409),
    },
    summary="The newest checkpoint published for the job, as a tar (step in X-Loracle-Step)",
)
async def latest_checkpoint(
    job_id: str,
    fencing: FencingDep,
    s: DbDep,
    settings: SettingsDep,
    after: Annotated[int, Query(ge=0, description="The newest step the worker has.")] = 0,
) -> Any:
    service.leased_job(s, job_id, fencing)
    packed = await run_in_threadpool(service.pack_latest_checkpoint, settings, job_id, after)
    if packed is None:
        return Response(status_code=204)
    step, tar = packed
    sha = await run_in_threadpool(service.filestore.sha256_file, tar)
    return FileResponse(
        tar,
        media_type="application/x-tar",
        headers={STEP_HEADER: str(step), SHA256_HEADER: sha},
        background=BackgroundTask(tar.unlink, missing_ok=True),
    )


@router.put(
    "/checkpoints/{step}",
    status_code=201,
    responses={**UPLOADED_RESPONSE, **error_responses(404, 409, 413, 422)},
    openapi_extra=TAR_BODY,
    summary="Publish a sealed checkpoint (a tar of its directory), whole or not at all",
)
async def put_checkpoint(
    request: Request,
    job_id: str,
    step: Annotated[int, PathParam(ge=1, description="The checkpoint's optimizer step.")],
    fencing: FencingDep,
    sha256: Sha256Dep,
    s: DbDep,
    settings: SettingsDep,
) -> Any:
    service.leased_job(s, job_id, fencing)
    declared = service.declared_sha256(sha256)
    s.rollback()  # no transaction held open while the body streams in
    root = service.job_root(settings, job_id)
    tar = await service.receive(request, root, declared, settings.max_artifact_bytes)
    try:
        service.leased_job(s, job_id, fencing)  # still ours after a long upload?
        final: Path = await run_in_threadpool(
            service.publish_checkpoint, settings, job_id, step, tar
        )
    finally:
        tar.unlink(missing_ok=True)
    return {"published": final.name}


@router.put(
    "/adapter",
    status_code=201,
    responses={**UPLOADED_RESPONSE, **error_responses(404, 409, 413, 422)},
    openapi_extra=TAR_BODY,
    summary="Publish the finished adapter and its record (a tar), whole or not at all",
)
async def put_adapter(
    request: Request,
    job_id: str,
    fencing: FencingDep,
    sha256: Sha256Dep,
    s: DbDep,
    settings: SettingsDep,
) -> Any:
    service.leased_job(s, job_id, fencing)
    declared = service.declared_sha256(sha256)
    s.rollback()
    root = service.job_root(settings, job_id)
    tar = await service.receive(request, root, declared, settings.max_artifact_bytes)
    try:
        service.leased_job(s, job_id, fencing)
        final: Path = await run_in_threadpool(service.publish_adapter, settings, job_id, tar)
    finally:
        tar.unlink(missing_ok=True)
    return {"published": final.name}
