"""worker/transport.py without a network: which transport a setting picks, and that the
uploading hooks pass every hook on (a hook left to TrainingHooks' default would silently
change a remote run, e.g. no checkpoint on a shutdown)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loracle.settings import Settings
from worker.training import TrainingHooks
from worker.transport import RemoteFiles, SharedDisk, UploadingHooks, files_for

REMOTE = {
    "api_url": "http://api-host:8000",
    "worker_token": "lorw_t",
    "database_url": "postgresql+psycopg://h/db",
    "broker_url": "redis://h:6379/0",
}


def test_the_api_url_picks_the_transport(tmp_path: Path):
    shared = files_for(Settings(data_dir=tmp_path), "job-1", 3)
    assert type(shared) is SharedDisk
    assert shared.data_file("file-x") == tmp_path / "files" / "file-x.jsonl"
    inner = TrainingHooks()
    assert shared.hooks(inner) is inner
    remote = files_for(Settings(data_dir=tmp_path, **REMOTE), "job-1", 3)
    assert isinstance(remote, RemoteFiles)
    assert remote.base == "http://api-host:8000/v1/worker/jobs/job-1"
    assert remote.headers == {"Authorization": "Bearer lorw_t", "X-Loracle-Fencing-Token": "3"}


class Recording(TrainingHooks):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_event(self, type: str, data: dict[str, Any]) -> None:
        self.calls.append(f"on_event:{type}")

    def on_progress(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("on_progress")

    def should_stop(self, step_end: bool = False) -> bool:
        self.calls.append("should_stop")
        return True

    def owns_run(self) -> bool:
        self.calls.append("owns_run")
        return False

    def checkpoint_on_stop(self) -> bool:
        self.calls.append("checkpoint_on_stop")
        return True


def test_uploading_hooks_pass_every_hook_on(tmp_path: Path):
    hooks = [n for n in vars(TrainingHooks) if not n.startswith("_")]
    assert all(name in vars(UploadingHooks) for name in hooks), "a hook is not passed on"
    inner = Recording()
    files = RemoteFiles(Settings(data_dir=tmp_path, **REMOTE), "job-1", 3)
    wrapped = UploadingHooks(inner, files)
    wrapped.on_event("warning", {"message": "m"})
    wrapped.on_progress(1, 2, 0.5, 1e-3, 10.0, None)
    assert wrapped.should_stop(True) and not wrapped.owns_run() and wrapped.checkpoint_on_stop()
    assert inner.calls == [
        "on_event:warning",
        "on_progress",
        "should_stop",
        "owns_run",
        "checkpoint_on_stop",
    ]
