"""The API's side of remote workers: it serves a job's training files and receives its
checkpoints and adapter, so that a worker on another host needs no disk shared with the API.

Who may: a worker token (api/security.py), and only for a job that is running under the
fencing token the request names (`X-Loracle-Fencing-Token`, the one the worker got when it
took the job's lease). A worker that lost its lease, or one asking for another job's file,
gets 409 or 404; a stolen worker token reads no job that is not running.

Whole or not at all: an upload streams into a temporary file in the job's directory while
its sha256 is computed; only when the body ended at its Content-Length with the digest the
worker declared (`X-Loracle-Sha256`) is it unpacked, into a temporary directory, fsynced
and renamed into place (`loracle.filestore.publish_dir`). A client that goes away halfway
leaves nothing behind: the temporary file is removed and the published directory is the
previous one.

Layout under `$LORACLE_DATA_DIR/jobs/<job>/`, the same a shared-disk worker writes:
`checkpoints/checkpoint-<step>/` (the newest sealed one the worker uploaded; older ones are
removed once it is published) and `adapter/` (what GET /v1/jobs/{id}/artifacts lists).
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
from pathlib import Path

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from api.errors import ApiError
from loracle import filestore
from loracle.settings import Settings
from loracle.store import jobs as store
from loracle.store.models import FileRow, JobRow

FENCING_HEADER = "X-Loracle-Fencing-Token"
SHA256_HEADER = "X-Loracle-Sha256"
STEP_HEADER = "X-Loracle-Step"
# What an adapter upload must hold (worker/artifacts.py writes them; loss.png is optional:
# a run with no logged step has no plot to draw).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "plan.json", "metrics.json")


def job_root(settings: Settings, job_id: str) -> Path:
    return Path(settings.data_dir) / "jobs" / job_id


def leased_job(s: Session, job_id: str, fencing_token: int) -> JobRow:
    """The job, if it is running under `fencing_token`; else 404 or 409 ``lease_lost``."""
    row = store.get_job(s, job_id, any_owner=True)
    if row is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    if row.status != store.RUNNING or row.fencing_token != fencing_token:
        raise ApiError(
            409,
            "lease_lost",
            f"job {job_id} is {row.status} under fencing token {row.fencing_token}, not running "
            f"under {FENCING_HEADER}: {fencing_token}; a worker moves only the files of a job "
            "whose lease it holds, so this attempt must stop",
        )
    return row


def job_file(s: Session, job: JobRow, file_id: str) -> FileRow:
    """One of the job's own data files (training or validation); 404 for any other."""
    row = None
    if file_id in (job.training_file, job.validation_file):
        row = store.get_file(s, file_id, job.owner)
    if row is None or not Path(row.path).is_file():
        raise ApiError(
            404,
            "not_found",
            f"job {job.id} has no file {file_id!r}: a worker reads only its job's "
            "training_file and validation_file",
        )
    return row


def declared_sha256(value: str | None) -> str:
    value = (value or "").strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ApiError(
            422,
            "invalid_request",
            f"{SHA256_HEADER}: got {value[:80]!r}; send the SHA-256 hex digest of the body, so "
            "that a body cut short or changed on the way is refused",
        )
    return value


async def receive(request: Request, folder: Path, sha256: str, limit: int) -> Path:
    """Stream the request body into a temporary file in `folder` and return it, once it
    arrived whole with the declared digest. Any failure removes it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=folder)
    tmp = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(fd, "wb") as out:
            # Plain writes on the event loop, as the JSONL upload does: each is one 64 KiB
            # chunk into the page cache; the fsync that waits on the disk runs in a thread.
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(
                        413,
                        "payload_too_large",
                        f"upload larger than LORACLE_MAX_ARTIFACT_BYTES={limit}; raise it on "
                        "the API",
                    )
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ApiError(
                422,
                "checksum_mismatch",
                f"the body's SHA-256 is {digest.hexdigest()} ({size} bytes), not the "
                f"{SHA256_HEADER} sent ({sha256}); it changed or was cut on the way. Nothing "
                "was published; send it again",
            )
    except ClientDisconnect:
        tmp.unlink(missing_ok=True)
        # Nobody reads this answer (the client is gone); the log and the test see it.
        raise ApiError(
            400,
            "upload_incomplete",
            f"the client went away after {size} bytes; nothing was published",
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _unpack(archive: Path, dest: Path) -> dict[str, int]:
    try:
        return filestore.unpack(archive, dest)
    except (tarfile.TarError, filestore.UnsafeArchive) as exc:
        raise ApiError(
            422,
            "invalid_archive",
            f"body: not a tar of plain files ({exc}); send what loracle.filestore.pack writes",
        ) from None


def publish_checkpoint(settings: Settings, job_id: str, step: int, archive: Path) -> Path:
    """Publish a sealed checkpoint of `step` from its tar, then drop the older ones."""
    checkpoints = job_root(settings, job_id) / "checkpoints"

    def fill(directory: Path) -> None:
        _unpack(archive, directory)
        sealed = filestore.marker_step(directory)
        if sealed != step:
            what = "no valid completion marker" if sealed is None else f"the marker of {sealed}"
            raise ApiError(
                422,
                "invalid_archive",
                f"step: the checkpoint of step {step} has {what} "
                f"({filestore.CHECKPOINT_MARKER} listing every file at its size); upload only "
                "sealed checkpoints",
            )

    final = filestore.publish_dir(checkpoints, f"{filestore.CHECKPOINT_PREFIX}{step}", fill)
    for older, path in filestore.checkpoint_dirs(checkpoints):
        if older < step:
            shutil.rmtree(path, ignore_errors=True)
    return final


def publish_adapter(settings: Settings, job_id: str, archive: Path) -> Path:
    def fill(directory: Path) -> None:
        files = _unpack(archive, directory)
        missing = [name for name in ADAPTER_FILES if name not in files]
        if missing:
            raise ApiError(
                422,
                "invalid_archive",
                f"body: the adapter lacks {', '.join(missing)}; upload the whole adapter "
                "directory the run wrote",
            )

    return filestore.publish_dir(job_root(settings, job_id), "adapter", fill)


def pack_latest_checkpoint(settings: Settings, job_id: str, after: int) -> tuple[int, Path] | None:
    """The newest published checkpoint newer than step `after`, packed into a temporary
    tar (the caller removes it), or None."""
    found = filestore.newest_complete_checkpoint(job_root(settings, job_id) / "checkpoints")
    if found is None or found[0] <= after:
        return None
    step, directory = found
    fd, name = tempfile.mkstemp(prefix=".download-", suffix=".tar", dir=directory.parent)
    with open(fd, "wb") as out:
        filestore.pack(directory, out)
    return step, Path(name)
