"""Errors only the worker raises: losing a run to another process, or the store that says who
owns it. The errors of the shared contract (plans, model sources, data files) are in
`loracle.errors`."""

from __future__ import annotations

from typing import Any

from loracle.errors import OUT_OF_MEMORY, LoracleError


class WorkerError(LoracleError):
    """Base class of the errors only the worker raises on purpose."""


class LeaseLost(WorkerError):
    """This process no longer owns the run it is training (its lease expired and another
    process took the job over): it must stop without publishing anything."""


class StoreUnavailable(WorkerError):
    """The job store could not be read to confirm this process still owns its run, so
    nothing more is written."""


class SourceCheckpointGone(RuntimeError):
    """The checkpoint a job was submitted `from_checkpoint` is no longer on disk."""


class OutOfMemory(WorkerError):
    """A one-card run ran out of CUDA memory on every try it had (worker/oom.py). The job
    fails with error code `out_of_memory`; the message names the peak measured at the last
    failure, the changes tried and the remedies left."""

    code = OUT_OF_MEMORY

    def __init__(
        self, message: str, *, peak: Any = None, attempts: int, remedies_left: list[str]
    ) -> None:
        super().__init__(message)
        self.peak = peak  # worker.memory_monitor.PeakMemory of the last try, when measured
        self.attempts = attempts
        self.remedies_left = remedies_left
