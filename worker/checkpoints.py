"""Trainer checkpoints that are complete or ignored, and finding the one to resume from.

A run keeps its checkpoints in `<output_dir>/checkpoints/checkpoint-<step>/`, every
`checkpoint_steps` steps; the Trainer writes them (adapter, optimizer, scheduler, RNG and
trainer state), `sealing_trainer` makes that crash-safe:

- Complete or ignored. Once the Trainer has written `checkpoint-<step>/`, every file in it and
  the directory itself are fsynced, and only then is the completion marker
  `loracle-complete.json` (the step and each file's size) created atomically: written to a
  temporary file, fsynced, renamed over with `os.replace`, and the directory fsynced again
  (`seal_checkpoint`).
- Old checkpoints are rotated out (`checkpoint_limit`) only after the newest is sealed, so a
  complete one is on disk at every instant, even with a limit of 1.
- Nothing is written, sealed or rotated without the caller's say-so (`ensure_owner`): a
  process that lost its run to another must not touch that process's checkpoints.
- A checkpoint is complete (`checkpoint_step`) when it has the marker, every file the marker
  lists at its recorded size, the adapter, optimizer, scheduler and trainer state, and its
  trainer_state.json parses. Resume picks the newest complete one
  (`find_resumable_checkpoint`); incomplete ones (a crash mid-write, or before the marker) are
  passed over.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loracle.jobfiles import CHECKPOINT_MARKER, CHECKPOINTS_DIRNAME  # noqa: F401 (re-exported)
from worker import faults

# Files a Trainer checkpoint of a PEFT model must hold to be resumed from.
CHECKPOINT_FILES = (
    "adapter_model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "trainer_state.json",
)
# The marker's temporary name, while it is being written (the marker: loracle.jobfiles).
CHECKPOINT_MARKER_TMP = CHECKPOINT_MARKER + ".tmp"


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's contents (a directory: its entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal_checkpoint(
    directory: Path, step: int, before_rename: Callable[[], None] | None = None
) -> None:
    """Mark a checkpoint the Trainer has finished writing as complete, crash-safely.

    Every file under `directory` and every directory in it are fsynced first, so the marker
    can never reach the disk before the data it vouches for (a power cut after a rename
    but before the data blocks would otherwise leave a "complete" checkpoint of zeros). The
    marker is then written to a temporary name, fsynced, renamed into place (atomic on
    POSIX: it exists whole or not at all), and the directory and its parent are fsynced so
    the rename itself is durable. Cost: the save waits until what the Trainer just wrote
    is on the disk (the page cache would write it back later anyway), plus one fsync per
    directory. `before_rename` runs between the temporary file and the rename (a
    fault-injection point for the reliability tests).
    """
    skip = {CHECKPOINT_MARKER, CHECKPOINT_MARKER_TMP}
    files: dict[str, int] = {}
    folders = [directory]
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() or path.name in skip:
            continue
        if path.is_dir():
            folders.append(path)
        elif path.is_file():
            _fsync(path)
            files[path.relative_to(directory).as_posix()] = path.stat().st_size
    for folder in reversed(folders):  # deepest first: entries before the folder naming them
        _fsync(folder)
    tmp = directory / CHECKPOINT_MARKER_TMP
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump({"step": step, "files": files}, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    if before_rename is not None:
        before_rename()
    os.replace(tmp, directory / CHECKPOINT_MARKER)
    _fsync(directory)
    _fsync(directory.parent)


def unseal_checkpoint(directory: Path) -> None:
    """Remove the marker before a checkpoint directory is written again (a resumed run
    reaching the step of a checkpoint left behind): until it is sealed anew, it is not
    complete."""
    removed = False
    for name in (CHECKPOINT_MARKER, CHECKPOINT_MARKER_TMP):
        path = directory / name
        if path.exists():
            path.unlink()
            removed = True
    if removed:
        _fsync(directory)


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint directory holds if it is complete (see the module docstring),
    else None."""
    try:
        marker = json.loads((path / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
        listed = marker["files"]
        if not all(name in listed for name in CHECKPOINT_FILES):
            return None
        for name, size in listed.items():
            if (path / name).stat().st_size != size:
                return None
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        return int(state.get("global_step", marker["step"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        # no marker, a listed file gone, or a file that does not parse
        return None


def find_resumable_checkpoint(checkpoints_dir: Path) -> tuple[Path | None, int, list[Path]]:
    """The newest complete `checkpoint-<step>` in `checkpoints_dir` as (path, step), or
    (None, 0), plus the incomplete ones newer than it."""
    candidates = []
    if checkpoints_dir.is_dir():
        for path in checkpoints_dir.glob("checkpoint-*"):
            suffix = path.name.removeprefix("checkpoint-")
            if path.is_dir() and suffix.isdigit():
                candidates.append((int(suffix), path))
    skipped = []
    for _, path in sorted(candidates, reverse=True):
        step = checkpoint_step(path)
        if step is not None:
            return path, step, skipped
        skipped.append(path)
    return None, 0, skipped


def sealing_trainer(trainer: type, ensure_owner: Callable[[str], None]) -> type:
    """`trainer` (transformers' `Trainer` or a subclass), with checkpoints sealed by a
    completion marker and rotated only after the seal (see the module docstring), and the
    checkpoint fault-injection points of `worker.faults.in_checkpoint`.

    `ensure_owner(what)` is called before a checkpoint is written and before it is sealed,
    `what` naming it; it raises when this process may no longer write to the run."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

    class LoracleTrainer(trainer):  # type: ignore[misc, valid-type]
        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            run_dir = Path(self._get_output_dir(trial=trial))
            folder = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            # A process that lost its lease (paused past it) must not unseal, overwrite or
            # rotate away the checkpoints of the process that took the job over.
            ensure_owner(folder.name)
            if self.args.should_save and folder.is_dir():
                unseal_checkpoint(folder)
            # The Trainer rotates old checkpoints out at the end of its save; that must wait
            # for the seal, or with checkpoint_limit=1 a crash between the two would leave no
            # complete checkpoint at all (and with any limit, an old checkpoint could be
            # deleted before the new one's data is on the disk). So its rotation is off
            # during the save, and done here after the seal, with the Trainer's arguments.
            limit = self.args.save_total_limit
            self.args.save_total_limit = None
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = limit
            if not self.args.should_save:  # not the saving process (distributed runs)
                return
            ensure_owner(f"the seal of {folder.name}")
            seal_checkpoint(
                folder,
                self.state.global_step,
                before_rename=lambda: faults.in_checkpoint(folder, "before-marker"),
            )
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

        def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
            super()._save_optimizer_and_scheduler(output_dir)
            faults.in_checkpoint(output_dir, "mid-write")

    return LoracleTrainer
