"""Where a worker's job files come from and go to: the shared data directory, or the API.

`files_for(settings, job_id, token)` picks by one setting:

- LORACLE_API_URL unset (`SharedDisk`): the worker reads uploads from and writes checkpoints
  and the adapter to the API's LORACLE_DATA_DIR itself, as on one machine or a shared volume.
- LORACLE_API_URL set (`RemoteFiles`): the worker shares no disk with the API. It holds a
  worker token (LORACLE_WORKER_TOKEN), which the API accepts only on /v1/worker/ and only
  for the job whose fencing token it sends (api/worker_files). It

  1. downloads the job's training and validation files into
     `$LORACLE_DATA_DIR/cache/files/`, checks each against the sha256 the store recorded at
     upload, and renames it into place only then (a cached file is re-checked before use);
  2. before training, downloads the newest checkpoint the API published for the job if it
     is newer than any complete one here: a job resumed on another host goes on from it;
  3. after each checkpoint is sealed here, uploads it as a tar; the API publishes it
     atomically (a cut-off upload is never visible) and keeps the newest;
  4. after the adapter is written here, uploads it with its record (plan.json,
     metrics.json, loss.png) before the job is marked succeeded.

  A transfer that fails (no connection, a timeout, a 5xx, a wrong digest) is tried three
  times, 1 s and 3 s apart; then `FileStoreUnreachable` ends the attempt and the job is
  requeued (worker/service.py). A 409 from the API means the lease moved on: `LeaseLost`.

Training code knows none of this: `hooks` wraps the run's hooks, uploading on the
`checkpoint` and `finished` events before passing them on. The upload runs on the training
thread, so training waits for it: a LoRA checkpoint with its optimizer state is tens of MB
for small models and a few GiB for 70B ones (seconds on a LAN), every `checkpoint_steps`
steps. Waiting keeps the promise simple: a `checkpoint` event means the API holds it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from sqlalchemy import select

from loracle import filestore
from loracle.errors import FileStoreUnreachable
from loracle.settings import Settings
from loracle.store.db import session
from loracle.store.models import FileRow
from worker.errors import LeaseLost
from worker.training import TrainingHooks

log = logging.getLogger("loracle.worker")

# Pauses before each try of a transfer: three tries over about 4 s, enough to ride out an
# API restart's few seconds; a longer outage ends the attempt, and the job is requeued.
TRANSFER_PAUSES = (0.0, 1.0, 3.0)
FENCING_HEADER = "X-Loracle-Fencing-Token"
SHA256_HEADER = "X-Loracle-Sha256"
STEP_HEADER = "X-Loracle-Step"


def files_for(settings: Settings, job_id: str, token: int) -> SharedDisk:
    if settings.api_url:
        return RemoteFiles(settings, job_id, token)
    return SharedDisk(settings, job_id, token)


class SharedDisk:
    """The API's data directory is this worker's: nothing to move."""

    def __init__(self, settings: Settings, job_id: str, token: int) -> None:
        self.settings = settings
        self.job_id = job_id
        self.token = token

    def data_file(self, file_id: str) -> Path:
        from worker.service import file_path

        return file_path(self.settings, file_id)

    def restore_checkpoint(self, output_dir: Path) -> int | None:
        return None

    def hooks(self, inner: TrainingHooks) -> TrainingHooks:
        return inner

    def publish_run(self, result: Any) -> None:
        """What a multi-card run's ranks wrote, for the API: nothing to do here."""


class RemoteFiles(SharedDisk):
    """The job's files over the API's /v1/worker/ endpoints (see the module docstring)."""

    def __init__(self, settings: Settings, job_id: str, token: int) -> None:
        super().__init__(settings, job_id, token)
        assert settings.api_url and settings.worker_token  # Settings refuses one without other
        self.base = f"{settings.api_url.rstrip('/')}/v1/worker/jobs/{job_id}"
        self.headers = {
            "Authorization": f"Bearer {settings.worker_token.strip()}",
            FENCING_HEADER: str(token),
        }
        self.cache = Path(settings.data_dir) / "cache"

    # -- the one way a request is made ------------------------------------------------------

    def _transfer(
        self,
        what: str,
        method: str,
        path: str,
        *,
        sink: BinaryIO | None = None,
        body: Callable[[], Iterator[bytes]] | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """`method path`, tried as `TRANSFER_PAUSES` says, the response body written to `sink`
        (rewound for each try; httpx raises when a body ends short of its Content-Length).
        `body` makes a fresh request body for each try. Raises `LeaseLost` on a 409 and
        `FileStoreUnreachable` on another refusal or once every try has failed."""
        timeout = httpx.Timeout(self.settings.file_timeout_s)
        last = ""
        for pause in TRANSFER_PAUSES:
            time.sleep(pause)
            try:
                with (
                    httpx.Client(timeout=timeout, headers=self.headers) as client,
                    client.stream(
                        method,
                        self.base + path,
                        content=body() if body is not None else None,
                        headers=headers,
                        params=params,
                    ) as response,
                ):
                    if response.status_code >= 400:
                        response.read()
                    if response.status_code == 409:
                        raise LeaseLost(f"{what}: the API says {_detail(response)}")
                    if 400 <= response.status_code < 500:
                        # A refusal (a worker token the API does not accept, a file it does not
                        # have) will not change with a retry here; another worker may fare better.
                        raise FileStoreUnreachable(
                            f"{what}: {self.base}{path} answered HTTP {response.status_code}: "
                            f"{_detail(response)}"
                        )
                    if response.status_code >= 500:
                        last = f"HTTP {response.status_code}: {_detail(response)}"
                    else:
                        if sink is not None:
                            sink.seek(0)
                            sink.truncate()
                            for chunk in response.iter_bytes(filestore.CHUNK):
                                sink.write(chunk)
                            sink.flush()
                        else:
                            response.read()
                        return response
            except httpx.HTTPError as exc:
                last = f"{exc.__class__.__name__}: {exc}"
            log.warning("job %s: %s failed (%s)", self.job_id, what, last)
        raise FileStoreUnreachable(
            f"{what}: the API's file store at {self.settings.api_url} could not be reached "
            f"({len(TRANSFER_PAUSES)} tries; last: {last}); check LORACLE_API_URL and that this "
            "host can reach the API"
        )

    # -- in: data files and the checkpoint to resume from -----------------------------------

    def data_file(self, file_id: str) -> Path:
        with session(self.settings.resolved_database_url) as s:
            expected = s.scalar(select(FileRow.sha256).where(FileRow.id == file_id))
        folder = self.cache / "files"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{file_id}.jsonl"
        if final.is_file() and filestore.sha256_file(final) == expected:
            return final
        what = f"download of {file_id}"
        got = ""
        for _ in TRANSFER_PAUSES:  # a download that arrives changed is fetched again
            with _temporary(folder) as (tmp, fh):
                self._transfer(what, "GET", f"/files/{file_id}", sink=fh)
                got = filestore.sha256_file(tmp)
                if got == expected:
                    os.replace(tmp, final)
                    return final
            log.warning("job %s: %s has sha256 %s, not %s", self.job_id, what, got, expected)
        raise FileStoreUnreachable(
            f"{what}: the file arrived with sha256 {got}, not the {expected} recorded at upload, "
            f"{len(TRANSFER_PAUSES)} times; the API's copy may be damaged"
        )

    def restore_checkpoint(self, output_dir: Path) -> int | None:
        """Fetch the API's newest published checkpoint into `output_dir/checkpoints/` when it is
        newer than every complete one here; returns its step, or None when nothing came."""
        checkpoints = output_dir / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        here = filestore.newest_complete_checkpoint(checkpoints)
        after = here[0] if here else 0
        what = "download of the last published checkpoint"
        with _temporary(checkpoints) as (tmp, fh):
            response = self._transfer(
                what, "GET", "/checkpoints/latest", sink=fh, params={"after": after}
            )
            if response.status_code == 204:  # nothing newer published
                return None
            step = int(response.headers[STEP_HEADER])
            if filestore.sha256_file(tmp) != response.headers.get(SHA256_HEADER):
                raise FileStoreUnreachable(f"{what}: the tar of step {step} arrived changed")

            def fill(directory: Path) -> None:
                filestore.unpack(tmp, directory)
                if filestore.marker_step(directory) != step:
                    raise FileStoreUnreachable(f"{what}: checkpoint {step} arrived incomplete")

            filestore.publish_dir(checkpoints, f"{filestore.CHECKPOINT_PREFIX}{step}", fill)
        log.info("job %s: resumes from checkpoint %s published by the API", self.job_id, step)
        return step

    # -- out: checkpoints and the adapter ---------------------------------------------------

    def upload(self, what: str, path: str, directory: Path) -> None:
        """PUT `directory` as a tar, with its length and digest: the API publishes it only if
        it arrives whole."""
        uploads = self.cache / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=uploads) as tar:
            filestore.pack(directory, tar)
            size = tar.tell()
            tar.seek(0)
            digest = _sha256_stream(tar)
            headers = {SHA256_HEADER: digest, "Content-Length": str(size)}

            def body() -> Iterator[bytes]:
                tar.seek(0)
                while chunk := tar.read(filestore.CHUNK):
                    yield chunk

            self._transfer(what, "PUT", path, body=body, headers=headers)
        log.info("job %s: %s published by the API (%d bytes)", self.job_id, what, size)

    def upload_checkpoint(self, directory: Path, step: int) -> None:
        if filestore.marker_step(directory) != step:
            log.warning("job %s: %s is not sealed; not uploaded", self.job_id, directory)
            return
        self.upload(f"upload of checkpoint {step}", f"/checkpoints/{step}", directory)

    def upload_adapter(self, directory: Path) -> None:
        self.upload("upload of the adapter", "/adapter", directory)

    def hooks(self, inner: TrainingHooks) -> TrainingHooks:
        return UploadingHooks(inner, self)

    def publish_run(self, result: Any) -> None:
        """A multi-card run's ranks report to the store themselves (worker/distributed.py),
        not through `hooks`: its newest sealed checkpoint, and its adapter when it succeeded,
        are uploaded from here before the job is finished."""
        folder = Path(result.artifacts.get("checkpoints_dir", ""))
        sealed = [p for p in folder.glob("checkpoint-*") if filestore.marker_step(p) is not None]
        if sealed:
            newest = max(sealed, key=lambda p: filestore.marker_step(p) or 0)
            self.upload_checkpoint(newest, filestore.marker_step(newest) or 0)
        if result.status == "succeeded" and result.artifacts.get("adapter_dir"):
            self.upload_adapter(Path(result.artifacts["adapter_dir"]))


class UploadingHooks(TrainingHooks):
    """`inner`, with the checkpoint uploaded after each seal and the adapter after it is
    written, each before the event reaches the store: a `checkpoint` event means the API has
    it, and the job is marked succeeded only after the adapter's upload. Every other hook is
    `inner`'s (a test checks that none is left to TrainingHooks' defaults): the checkpoint a
    shutdown writes is uploaded like any other."""

    def __init__(self, inner: TrainingHooks, files: RemoteFiles) -> None:
        self.inner = inner
        self.files = files

    def on_event(self, type: str, data: dict[str, Any]) -> None:
        if type == "checkpoint":
            self.files.upload_checkpoint(Path(data["path"]), int(data["step"]))
        elif type == "finished":
            self.files.upload_adapter(Path(data["adapter_dir"]))
        self.inner.on_event(type, data)

    def on_progress(self, *args: Any, **kwargs: Any) -> None:
        self.inner.on_progress(*args, **kwargs)

    def should_stop(self, step_end: bool = False) -> bool:
        return self.inner.should_stop(step_end)

    def owns_run(self) -> bool:
        return self.inner.owns_run()

    def checkpoint_on_stop(self) -> bool:
        return self.inner.checkpoint_on_stop()


@contextmanager
def _temporary(folder: Path) -> Iterator[tuple[Path, BinaryIO]]:
    """A temporary file in `folder`, open for writing; removed afterwards unless moved."""
    fd, name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=folder)
    tmp = Path(name)
    try:
        with open(fd, "w+b") as fh:
            yield tmp, fh
    finally:
        tmp.unlink(missing_ok=True)


def _sha256_stream(fh: Any) -> str:
    import hashlib

    digest = hashlib.sha256()
    while chunk := fh.read(filestore.CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{body.get('error')}: {body.get('detail')}"
    except ValueError:
        return response.text[:300]
