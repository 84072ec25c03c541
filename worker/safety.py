"""Refuse pickled code in checkpoints before anything loads them.

Resuming loads ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth`` and
``scaler.pt``: pickles. transformers already loads them with
``torch.load(weights_only=True)``; we check first anyway, without executing
anything, so that a tampered checkpoint is refused with a message that says
what it holds and the job fails cleanly. The check walks the pickle's opcodes
(pickletools) and accepts only the globals that tensors, optimizer state and
RNG state need.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

from worker.errors import WorkerError

# What the Trainer's own resume files reference: torch tensors and storages,
# ordered dicts, numpy arrays and scalars (RNG state), and a few builtin containers.
ALLOWED_MODULE_PREFIXES = ("torch", "collections", "numpy", "_codecs")
ALLOWED_BUILTINS = {"set", "frozenset", "slice", "complex", "bytearray", "tuple", "list", "dict"}
RESUME_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt")


class CheckpointRefused(WorkerError):
    """A checkpoint holds pickled references to code we do not load."""


def _pickle_bytes(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):  # torch.save's zip format: data.pkl inside
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
    return [data]


def _globals(blob: bytes) -> list[str]:
    found: list[str] = []
    strings: list[str] = []
    memo: dict[int, str] = {}
    for opcode, arg, _ in pickletools.genops(blob):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
        elif name == "STACK_GLOBAL":
            module, qual = (strings[-2], strings[-1]) if len(strings) >= 2 else ("?", "?")
            found.append(f"{module}.{qual}")
        elif name in (
            "SHORT_BINUNICODE",
            "BINUNICODE",
            "BINUNICODE8",
            "UNICODE",
            "STRING",
            "BINSTRING",
            "SHORT_BINSTRING",
        ):
            strings.append(str(arg))
        elif name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
            memo[int(arg)] = strings[-1]
        elif name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET") and int(arg) in memo:
            strings.append(memo[int(arg)])
    return found


def _allowed(qualified: str) -> bool:
    module = qualified.split(".", 1)[0]
    if module == "builtins":
        return qualified.removeprefix("builtins.") in ALLOWED_BUILTINS
    return qualified.startswith(ALLOWED_MODULE_PREFIXES)


def check_file(path: Path) -> None:
    try:
        blobs = _pickle_bytes(path)
        bad = sorted({g for blob in blobs for g in _globals(blob) if not _allowed(g)})
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointRefused(f"{path} is not a readable pickle ({exc}); refused") from None
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
