"""Domain errors of the advisor. They know nothing of HTTP: the API maps them to
4xx answers in one place (``api/errors.py``), the CLI prints them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where, what was given, and how to fix it."""

    field: str
    message: str
    value: object = None

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class AdvisorError(Exception):
    """Base class of the advisor's errors."""


@dataclass
class InvalidInput(AdvisorError):
    """The request cannot be answered as given. Collects every problem found
    before raising, so the user fixes them all in one round trip."""

    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.summary())

    def summary(self) -> str:
        return "; ".join(str(p) for p in self.problems)

    def __str__(self) -> str:
        return self.summary()


class UnknownName(InvalidInput):
    """A catalog lookup failed; the message lists the closest names."""
