"""A directory as a tar archive, streamed as it is read: a checkpoint of a large model holds
gigabytes (its optimizer state), which neither memory nor a temporary copy should hold. Each
member is its header (tarfile's own), its bytes in chunks, and the padding to a block."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20
BLOCK = tarfile.BLOCKSIZE


def tar_stream(folder: Path, name: str) -> Iterator[bytes]:
    """`folder`'s regular files (no links), under `name/` in the archive."""
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        info = tarfile.TarInfo(f"{name}/{path.relative_to(folder).as_posix()}")
        stat = path.stat()
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        yield info.tobuf(tarfile.PAX_FORMAT)
        sent = 0
        with path.open("rb") as fh:
            while sent < info.size and (chunk := fh.read(min(CHUNK, info.size - sent))):
                sent += len(chunk)
                yield chunk
        if sent != info.size:  # the file shrank while read: the archive would be corrupt
            raise OSError(f"{path} changed while it was sent")
        yield b"\0" * (-info.size % BLOCK)
    yield b"\0" * (2 * BLOCK)
