"""Estimate against measurement, from the jobs themselves, and the fit margin a card earns.

Every job that ran on a CUDA card records `torch.cuda.max_memory_reserved` over its whole run
(worker.memory_monitor) next to the estimate it was submitted with: `total_gib`, what the
card must have free for the whole run. This module reads those pairs back:

- `observations` turns job rows into (card class, architecture, variant, estimate, measured);
- `groups` answers, per card class x architecture x variant, how many jobs, the median error
  and the worst error (error = estimate / measured - 1: negative is an under-estimate);
- `margins` gives each card its own fit margin once it has `MIN_JOBS` measured jobs:
  the smallest margin with which every one of them would have fit (their worst
  under-estimate, floored at `MARGIN_FLOOR`, rounded up to the next percent). Until then
  the card keeps the published margin (advisor.memory.PUBLISHED_MARGIN).

CPU runs measure the process's resident set growth, another quantity: they are not
observations. A card is known by its name, as the driver gives it to torch and to
nvidia-smi alike ('NVIDIA A100-SXM4-80GB'): placement gives a measured margin to the card
classes of that name. The class id is shown beside it (`loracle.placement.card_class`); it is
not the key, since its memory figure may round differently from one reading to another.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from advisor.architecture import Architecture
from advisor.memory import GIB, PUBLISHED_MARGIN, FitMargin
from advisor.variants import combination
from loracle.placement import card_class

# Twenty jobs: the worst of 20 draws bounds about the 95th percentile of the error (the
# chance that a 21st job is worse than all 20 is 1/21), the same reach as the published
# margin's two standard deviations.
MIN_JOBS = 20
MARGIN_FLOOR = 0.02
# Placement reads the latest jobs only: enough for every card class's MIN_JOBS in a fleet of
# a few dozen classes, and a bounded read at each submission.
PLACEMENT_WINDOW = 2000


def architecture_label(arch: Architecture) -> str:
    """What calibration groups a job's model by: its family and shape ('llama 32x4096')."""
    return f"{arch.model_type} {arch.num_hidden_layers}x{arch.hidden_size}"


@dataclass(frozen=True)
class Observation:
    job_id: str
    card_class: str
    card_name: str
    card_gib: float
    architecture: str
    variant: str
    estimate_gib: float
    measured_gib: float

    @property
    def error(self) -> float:
        """estimate / measured - 1: negative when the run reserved more than estimated."""
        return self.estimate_gib / self.measured_gib - 1


def observation(
    job_id: str,
    model: str,
    variant: str,
    combine_with: Sequence[str],
    estimate: dict[str, Any] | None,
    measured: dict[str, Any] | None,
) -> Observation | None:
    """One job's pair, or None when it has no estimate or no CUDA measurement."""
    if not estimate or not measured or estimate.get("total_gib") is None:
        return None
    reserved = measured.get("reserved_bytes")
    if not reserved or not str(measured.get("device", "")).startswith("cuda"):
        return None
    name = str(measured.get("device_name") or "unknown card")
    card_gib = (measured.get("device_total_bytes") or 0) / GIB
    return Observation(
        job_id=job_id,
        card_class=card_class(name, card_gib, "cuda"),
        card_name=name,
        card_gib=round(card_gib, 2),
        architecture=str(estimate.get("architecture") or model),
        variant=combination(variant, list(combine_with)).label,
        estimate_gib=float(estimate["total_gib"]),
        measured_gib=reserved / GIB,
    )


def observations(rows: Iterable[Any]) -> list[Observation]:
    """The pairs of job rows (anything with the JobRow columns used here)."""
    found = (
        observation(r.id, r.model, r.variant, r.combine_with or [], r.estimate, r.measured_peak)
        for r in rows
    )
    return [o for o in found if o is not None]


@dataclass(frozen=True)
class Group:
    card_class: str
    card_name: str
    architecture: str
    variant: str
    jobs: int
    median_error: float
    worst_error: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "card_class": self.card_class,
            "card_name": self.card_name,
            "architecture": self.architecture,
            "variant": self.variant,
            "jobs": self.jobs,
            "median_error": round(self.median_error, 4),
            "worst_error": round(self.worst_error, 4),
        }


def _worst(errors: Sequence[float]) -> float:
    """The error farthest from zero, under-estimates first when they are as far."""
    return min(errors, key=lambda e: (-round(abs(e), 9), e))


def groups(found: Sequence[Observation]) -> list[Group]:
    keyed: dict[tuple[str, str, str], list[Observation]] = {}
    for o in found:
        keyed.setdefault((o.card_name, o.architecture, o.variant), []).append(o)
    return [
        Group(
            card_class=members[0].card_class,
            card_name=name,
            architecture=arch,
            variant=variant,
            jobs=len(members),
            median_error=statistics.median(o.error for o in members),
            worst_error=_worst([o.error for o in members]),
        )
        for (name, arch, variant), members in sorted(keyed.items())
    ]


@dataclass(frozen=True)
class CardMargin:
    card_class: str
    card_name: str
    jobs: int
    margin: FitMargin
    measured: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "card_class": self.card_class,
            "card_name": self.card_name,
            "jobs": self.jobs,
            "jobs_needed": MIN_JOBS,
            "margin": self.margin.fraction,
            "margin_source": self.margin.source,
            "measured": self.measured,
        }


def measured_margin(errors: Sequence[float]) -> float:
    """The smallest margin with which every job would have fit: its worst under-estimate
    (measured / estimate - 1), floored at MARGIN_FLOOR, rounded up to the next percent."""
    need = max(1 / (1 + e) - 1 for e in errors)
    return math.ceil(max(need, MARGIN_FLOOR) * 100 - 1e-9) / 100


def margins(found: Sequence[Observation]) -> dict[str, CardMargin]:
    """Each measured card's margin, by card name: its own from MIN_JOBS jobs on, else the
    published one."""
    by_card: dict[str, list[Observation]] = {}
    for o in found:
        by_card.setdefault(o.card_name, []).append(o)
    out = {}
    for name, members in sorted(by_card.items()):
        klass, jobs = members[0].card_class, len(members)
        if jobs >= MIN_JOBS:
            fraction = measured_margin([o.error for o in members])
            margin, measured = FitMargin.measured(name, jobs, fraction), True
        else:
            margin, measured = PUBLISHED_MARGIN, False
        out[name] = CardMargin(klass, name, jobs, margin, measured)
    return out


def measured_margins(found: Sequence[Observation]) -> dict[str, FitMargin]:
    """Only the cards (by name) that have earned their own margin, for placement."""
    return {k: m.margin for k, m in margins(found).items() if m.measured}
