"""Errors of the torch-free contract the API and the worker share: a plan, a model source or a
data file refused. Standard library only.

Each knows nothing of HTTP or Celery; callers map them to their own error shape. Every
message names what was wrong, the offending value, and how to fix it. `Problem` and
`InvalidInput`, the advisor's collected validation errors, are re-exported here: the advisor
is the bottom layer and raises them itself, and everything above takes them from here or
from there.
"""

from __future__ import annotations

from dataclasses import dataclass

from advisor.errors import InvalidInput, Problem

# The error code (the job's `error_type`, the API's `error.code`) of a job that did not fit its
# card: CUDA ran out of memory on its first try and on each of its LORACLE_OOM_RETRIES retries
# (worker/oom.py), or no remedy that keeps its batch was left to try. Its message names the
# measured peak, what was tried and the remedies left.
OUT_OF_MEMORY = "out_of_memory"

__all__ = [
    "OUT_OF_MEMORY",
    "DataFileError",
    "DataProblem",
    "FileStoreUnreachable",
    "InvalidInput",
    "LoracleError",
    "ModelSourceError",
    "PlanError",
    "Problem",
]


class LoracleError(Exception):
    """Base class of every error loracle raises on purpose outside the advisor."""


class PlanError(LoracleError, ValueError):
    """A training plan is invalid. `problems` lists every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            f"invalid training plan ({len(self.problems)} problem(s)):\n"
            + "\n".join(f"- {p}" for p in self.problems)
        )


class ModelSourceError(LoracleError):
    """A model source was refused: outside the allowed roots, asks for remote code, no weights."""


@dataclass(frozen=True)
class DataProblem:
    """One problem in a data file: `line` is 1-based (0 for the file as a whole)."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


class DataFileError(LoracleError, ValueError):
    """A training data file is unusable. `problems` lists what is wrong, line by line.

    `truncated` is True when more problems existed than were collected (`max_errors`).
    """

    def __init__(self, problems: list[DataProblem], *, truncated: bool = False) -> None:
        self.problems = list(problems)
        self.truncated = truncated
        more = "\n- ... more problems not shown" if truncated else ""
        super().__init__(
            f"data file rejected ({len(self.problems)} problem(s)):\n"
            + "\n".join(f"- {p}" for p in self.problems)
            + more
        )


class FileStoreUnreachable(LoracleError):
    """A remote worker (LORACLE_API_URL) could not move a job's files: the API's file endpoints
    did not answer, answered 5xx, or sent a file whose sha256 is not the stored one.

    The job's record shows it as ``error_type`` "FileStoreUnreachable" (the error code). The
    attempt ends and the job goes back to its queue for another try, on whichever worker
    takes it; it fails only when it has used its attempts (LORACLE_MAX_ATTEMPTS). Nothing
    half-moved is used: a download is checked before it is renamed into the cache, and the
    API publishes an upload only once it arrived whole."""
