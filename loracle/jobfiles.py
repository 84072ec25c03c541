"""Where a job's files lie under the data directory, for the worker that writes them and the
API that serves them:

    <data dir>/jobs/<job id>/checkpoints/checkpoint-<step>/   Trainer checkpoints, each
                                                               complete once CHECKPOINT_MARKER
                                                               is in it (worker.checkpoints)
    <data dir>/jobs/<job id>/adapter/                          the adapter and its record
    <data dir>/jobs/<job id>/merged/                           the adapter merged into its
                                                               base (worker.merge), on request
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS_DIRNAME = "checkpoints"
ADAPTER_DIRNAME = "adapter"
MERGED_DIRNAME = "merged"
# Created (atomically) after everything else in a checkpoint is on disk: the only sign of a
# complete checkpoint.
CHECKPOINT_MARKER = "loracle-complete.json"


def job_dir(data_dir: str | Path, job_id: str) -> Path:
    return Path(data_dir) / "jobs" / job_id


def merged_dir(data_dir: str | Path, job_id: str) -> Path:
    return job_dir(data_dir, job_id) / MERGED_DIRNAME


def checkpoint_dir(data_dir: str | Path, job_id: str, step: int) -> Path:
    return job_dir(data_dir, job_id) / CHECKPOINTS_DIRNAME / f"checkpoint-{step}"


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / CHECKPOINT_MARKER).is_file()
