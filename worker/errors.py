"""Domain errors raised by the worker. Standard library only: the API imports these.

Each error knows nothing of HTTP or Celery; callers map them to their own error shape. Every
message names what was wrong, the offending value, and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass


class WorkerError(Exception):
    """Base class of every error the worker raises on purpose."""


class PlanError(WorkerError, ValueError):
    """A training plan is invalid. `problems` lists every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            f"invalid training plan ({len(self.problems)} problem(s)):\n"
            + "\n".join(f"- {p}" for p in self.problems)
        )


class LeaseLost(WorkerError):
    """This process no longer owns the run it is training (its lease expired and another
    process took the job over): it must stop without publishing anything."""


class StoreUnavailable(WorkerError):
    """The job store could not be read to confirm this process still owns its run, so
    nothing more is written."""


class ModelSourceError(WorkerError):
    """A model source was refused: outside the allowed roots, asks for remote code, no weights."""


@dataclass(frozen=True)
class DataProblem:
    """One problem in a data file: `line` is 1-based (0 for the file as a whole)."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


class DataFileError(WorkerError, ValueError):
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
