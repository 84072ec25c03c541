"""Moving a job's directories between hosts whole or not at all: the tar both sides speak, its
safe unpacking, and the atomic publish. Torch-free and web-free; the API (api/worker_files)
and the remote worker (worker/transport.py) both use it.

A checkpoint or an adapter travels as one uncompressed tar (safetensors and optimizer
states barely compress; gzip would cost CPU on both sides for a few percent). The receiver
never writes into the final place: it unpacks into a temporary directory next to it, fsyncs
every file and directory, and renames the directory into place (`publish_dir`), so a reader
sees the old directory or the new one, and a transfer cut off anywhere leaves no trace but a
temporary name that the next publish of that name removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from loracle.jobfiles import CHECKPOINT_MARKER

__all__ = ["CHECKPOINT_MARKER", "CHECKPOINT_PREFIX", "pack", "publish_dir", "unpack"]

CHUNK = 1 << 20
# The completion marker of a sealed checkpoint (worker/checkpoints.py writes it last, with
# the step and every file's size; its name is loracle.jobfiles'). The API publishes a
# checkpoint only if the marker is there and every file it lists arrived at its size.
CHECKPOINT_PREFIX = "checkpoint-"


class UnsafeArchive(ValueError):
    """A tar that may not be unpacked: a link, a device, an absolute path or one going up."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file's contents, or a directory's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """fsync every file under `directory`, then every directory deepest first: entries reach
    the disk before the directory that names them."""
    folders = [directory]
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            continue
        if path.is_dir():
            folders.append(path)
        elif path.is_file():
            fsync_path(path)
    for folder in reversed(folders):
        fsync_path(folder)


def pack(directory: Path, out: BinaryIO) -> None:
    """Write the regular files under `directory` (names relative to it, sorted) to `out` as
    a tar. Symlinks and other special files are left out: nothing a run writes is one."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            tar.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)


def unpack(archive: Path, dest: Path) -> dict[str, int]:
    """Unpack a tar made by `pack` into the existing directory `dest`; returns each file's
    relative name and size. Raises `UnsafeArchive` for a member that is not a regular file or
    directory, or whose name is absolute or goes up, before anything is written; a tar cut
    short raises `tarfile.TarError`."""
    files: dict[str, int] = {}
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = tar.getmembers()
            for member in members:
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts or not name.parts:
                    raise UnsafeArchive(f"member {member.name!r} is absolute or goes up")
                if not (member.isfile() or member.isdir()):
                    raise UnsafeArchive(f"member {member.name!r} is not a regular file")
                if member.isfile():
                    files[name.as_posix()] = member.size
            # The standard library's own "data" filter too: it refuses what slipped past the
            # checks above (and drops modes no data file needs).
            tar.extractall(dest, members=members, filter="data")
    except EOFError as exc:  # a tar that ends inside a member
        raise tarfile.ReadError(f"archive cut short: {exc}") from None
    return files


def marker_step(directory: Path) -> int | None:
    """The step of a sealed checkpoint directory whose marker lists only files present at
    their recorded sizes; None when it is not complete."""
    try:
        marker = json.loads((directory / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
        for name, size in marker["files"].items():
            if (directory / name).stat().st_size != size:
                return None
        return int(marker["step"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def checkpoint_dirs(checkpoints: Path) -> list[tuple[int, Path]]:
    """The `checkpoint-<step>` directories in `checkpoints`, newest first."""
    found = []
    if checkpoints.is_dir():
        for path in checkpoints.iterdir():
            suffix = path.name.removeprefix(CHECKPOINT_PREFIX)
            if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() and path.is_dir():
                found.append((int(suffix), path))
    return sorted(found, reverse=True)


def newest_complete_checkpoint(checkpoints: Path) -> tuple[int, Path] | None:
    for step, path in checkpoint_dirs(checkpoints):
        if marker_step(path) == step:
            return step, path
    return None


def publish_dir(parent: Path, name: str, fill: Callable[[Path], None]) -> Path:
    """Make `parent/name` the directory `fill` writes, atomically and durably: `fill` writes
    into a temporary directory in `parent` (same filesystem); everything in it is fsynced;
    it is renamed over `parent/name`; `parent` is fsynced so the rename survives a power cut.

    An existing `parent/name` is moved aside first and removed after the swap. A failing
    `fill` leaves `parent/name` untouched. Temporary directories of this name left by an
    earlier interrupted publish are removed first (the caller serializes publishes of one
    name: for a job, only the holder of its lease publishes)."""
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{name}-tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = parent / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-tmp-", dir=parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; what is published is meant to be read
        fill(tmp)
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{name}-old-", dir=parent))
        os.replace(final, old / name)
    os.replace(tmp, final)
    fsync_path(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final
