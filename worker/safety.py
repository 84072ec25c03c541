"""Refuse pickled code in checkpoints before anything loads them.

Resuming loads ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth`` and
``scaler.pt``: pickles. transformers loads them with ``torch.load(weights_only=True)``,
whose restricted unpickler already refuses arbitrary code; we check first anyway, so that
a tampered checkpoint is refused with a message that names what it holds, and the job
fails cleanly before the Trainer touches it.

The check runs the pickle machine itself, with every global it names replaced by an inert
stand-in (`_Inert`) that runs nothing when it is called, built or filled. Letting the real
unpickler resolve the stack is what makes the check exact: a scan of the opcodes that
guesses a ``STACK_GLOBAL``'s module and name from the strings it saw last can be misled
(push ``"os", "system"``, then two harmless strings, then pop them). Every name must be
on an exact allowlist: the globals torch's own weights-only unpickler allows, and the
numpy names transformers adds for the RNG state. A prefix such as ``torch.`` would let
``torch.save`` or ``torch.hub.load`` through.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

from worker.errors import WorkerError

RESUME_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt")

# What transformers' `trainer_pt_utils.safe_globals` adds for the numpy RNG state, under
# the module names numpy 1 and numpy 2 pickle them with.
NUMPY_GLOBALS = frozenset(
    {
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.dtypes.UInt32DType",
    }
)


class CheckpointRefused(WorkerError):
    """A checkpoint holds pickled references to code we do not load."""


@cache
def allowed_globals() -> frozenset[str]:
    """Every ``module.name`` a resume file may reference."""
    from torch import _weights_only_unpickler

    return frozenset(_weights_only_unpickler._get_allowed_globals()) | NUMPY_GLOBALS


class _Inert:
    """Stands in for every global while a pickle is checked: calling, building or filling
    it runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def add(self, value: Any) -> None:
        pass


class _Checker(pickle.Unpickler):
    def __init__(self, stream: io.BytesIO) -> None:
        super().__init__(stream)
        self.names: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        self.names.append(f"{module}.{name}")
        return _Inert

    def persistent_load(self, pid: Any) -> Any:
        return _Inert()  # torch's storages: references to other entries of the archive


def _pickles(data: bytes) -> list[bytes]:
    if zipfile.is_zipfile(io.BytesIO(data)):  # torch.save's format: data.pkl inside
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
    return [data]


def referenced_globals(data: bytes) -> list[str]:
    """Every global the pickles in `data` name, in order. Raises ValueError when `data`
    is not made of whole pickles (a torch zip archive's, or pickles one after another)."""
    names: list[str] = []
    for blob in _pickles(data):
        stream = io.BytesIO(blob)
        while stream.tell() < len(blob):  # a file may hold several pickles in a row
            checker = _Checker(stream)
            try:
                checker.load()
            except Exception as exc:  # any malformed stream: refused, never guessed at
                raise ValueError(f"{exc.__class__.__name__}: {exc}") from None
            names += checker.names
    return names


def check_file(path: Path) -> None:
    try:
        names = referenced_globals(path.read_bytes())
    except Exception as exc:  # a damaged archive raises zlib, EOF or format errors alike
        raise CheckpointRefused(f"{path} is not a readable pickle ({exc}); refused") from None
    bad = sorted(set(names) - allowed_globals())
    if bad:
        raise CheckpointRefused(
            f"{path} references code a training checkpoint never holds ({', '.join(bad)}); "
            "refused without loading it. Delete the checkpoint to start the job over"
        )


def check_checkpoint(directory: Path) -> None:
    """Refuse a checkpoint whose resume files reference anything but tensor state."""
    for name in RESUME_FILES:
        path = directory / name
        if path.is_file():
            check_file(path)
