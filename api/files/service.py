"""Storing and validating uploaded training files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from fastapi import UploadFile
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from advisor.errors import Problem
from api import idempotency
from api.errors import ApiError
from api.paths import check_plain_name
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.models import FileRow
from worker.data import inspect_jsonl
from worker.errors import DataFileError

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
    }


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
        filename = check_plain_name(upload.filename or "upload.jsonl", "file.filename")
        if idempotency_key:
            digest_ = idempotency.body_hash(
                {"sha256": digest.hexdigest(), "purpose": purpose, "filename": filename}
            )
            existing = idempotency.replay(s, owner, "files", idempotency_key, digest_)
            if existing is None:
                try:
                    idempotency.claim(s, owner, "files", idempotency_key, digest_, file_id)
                except IntegrityError:  # a concurrent upload with this key won
                    existing = idempotency.replay(s, owner, "files", idempotency_key, digest_)
            if existing is not None:
                row = store.get_file(s, existing, owner)
                assert row is not None
                return row, False
        final = folder / f"{file_id}.jsonl"
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    row = store.add_file(
        s,
        id=file_id,
        owner=owner,
        filename=filename,
        purpose=purpose,
        bytes=size,
        rows=info.rows,
        format=info.format,
        sha256=digest.hexdigest(),
        path=str(final),
        token_stats={},
    )
    return row, True
