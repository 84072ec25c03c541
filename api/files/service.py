"""Storing and validating uploaded training files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from fastapi import UploadFile
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from advisor.errors import Problem
from api import idempotency
from api.errors import ApiError
from api.paths import check_plain_name
from loracle.errors import DataFileError
from loracle.jsonl import inspect_jsonl
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.models import FileRow

CHUNK = 1 << 20


def file_out(row: FileRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "filename": row.filename,
        "purpose": row.purpose,
        "bytes": row.bytes,
        "rows": row.rows,
        "format": row.format,
        "sha256": row.sha256,
        "created_at": int(row.created_at.timestamp()),
        "token_stats": row.token_stats or {},
        "status": "processed",
        "expires_at": None,
    }


def content_path(settings: Settings, row: FileRow, must_exist: bool = True) -> Path:
    """Where a file's bytes are: an upload under the data directory, or a job's result
    artifact (`<job id>/<name>`, served from the job's artifacts)."""
    if row.purpose == store.RESULTS_PURPOSE:
        job_id, _, name = row.path.partition("/")
        path = Path(settings.data_dir) / "jobs" / job_id / "adapter" / name
    else:
        path = Path(row.path)
    if must_exist and not path.is_file():
        raise ApiError(
            404, "not_found", f"file {row.id}'s bytes are gone from the file store ({row.path})"
        )
    return path


async def save_upload(
    s: Session,
    settings: Settings,
    upload: UploadFile,
    purpose: str,
    owner: str | None,
    idempotency_key: str | None = None,
) -> tuple[FileRow, bool]:
    """Store and check an upload. Returns the file and whether it was created now
    (False: a replay of an earlier request with the same Idempotency-Key)."""
    if purpose != "fine-tune":
        raise ApiError(
            422,
            "invalid_request",
            f"purpose: got {purpose!r}; the only purpose is 'fine-tune'",
            [Problem("purpose", "must be 'fine-tune'", purpose)],
        )
    folder = Path(settings.data_dir) / "files"
    folder.mkdir(parents=True, exist_ok=True)
    file_id = store.new_id("file")
    tmp = folder / f".{file_id}.part"
    digest = hashlib.sha256()
    size = 0
    try:
        with tmp.open("wb") as out:
            while chunk := await upload.read(CHUNK):
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise ApiError(
                        413,
                        "payload_too_large",
                        f"file: larger than the limit of {settings.max_upload_bytes} bytes; "
                        "split the data or raise LORACLE_MAX_UPLOAD_BYTES",
                    )
                digest.update(chunk)
                out.write(chunk)
        # Checking every line of a file of up to the upload limit, and the store's writes
        # (which may wait on SQLite's lock), run on the thread pool: on the event loop they
        # would stall every other request, /healthz and the dispatcher included.
        return await run_in_threadpool(
            _check_and_store,
            s,
            upload.filename,
            purpose,
            owner,
            idempotency_key,
            tmp,
            folder / f"{file_id}.jsonl",
            file_id,
            size,
            digest.hexdigest(),
        )
    finally:
        tmp.unlink(missing_ok=True)


def _check_and_store(
    s: Session,
    upload_name: str | None,
    purpose: str,
    owner: str | None,
    idempotency_key: str | None,
    tmp: Path,
    final: Path,
    file_id: str,
    size: int,
    sha256: str,
) -> tuple[FileRow, bool]:
    try:
        info = inspect_jsonl(tmp)
    except DataFileError as exc:
        problems = [Problem("file", str(p), {"line": p.line}) for p in exc.problems]
        raise ApiError(
            422,
            "invalid_file",
            f"file: {len(exc.problems)} problem(s); first: {problems[0]}",
            problems,
        ) from None
    filename = check_plain_name(upload_name or "upload.jsonl", "file.filename")
    if idempotency_key:
        digest = idempotency.body_hash({"sha256": sha256, "purpose": purpose, "filename": filename})
        existing = idempotency.replay_or_claim(s, owner, "files", idempotency_key, digest, file_id)
        if existing is not None:
            row = store.get_file(s, existing, owner)
            assert row is not None
            return row, False
    os.replace(tmp, final)
    try:
        row = store.add_file(
            s,
            id=file_id,
            owner=owner,
            filename=filename,
            purpose=purpose,
            bytes=size,
            rows=info.rows,
            format=info.format,
            sha256=sha256,
            path=str(final),
            token_stats={},
        )
        # Committed before the 201 is sent: a client that submits a job with this id the
        # moment it has the answer must find the file (the session's own commit comes only
        # after the response has gone out).
        s.commit()
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    return row, True
