"""Placement: which registered card class can run a job, decided at submission.

Every live worker registers its cards (loracle.store.workers); workers with the same kind of
card form a *card class* (`nvidia-h100-80gb-hbm3-79p6g`, or `cpu-24g` for a CPU worker's memory
budget). For a job the advisor's estimate is computed for each class, with the precision and
kernels that class's card gives (bf16 where the card has it, fp16 where not), and the job goes
to the smallest class whose card holds it with the fit margin: the larger cards stay free for
the jobs only they can hold. The job is then sent to that class's queue
(`loracle.<class>.x<cards>`), which only workers of the class consume (each declares its
queues as it starts), so no other worker ever receives it, and any worker of the class may:
a class's workers share its load and replace each other as they come and go. Routing per
worker instead would pin a job to one process that may stop before taking it.

No class fits: the job is refused with the largest card, what it needs there and the
remedies, or, with `placement: "wait"`, kept queued without a queue until a worker that
fits registers (the dispatcher tries again every round). No worker registered at all (a
service still starting): the job waits the same way, whatever it asked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from advisor.answers import Remedy
from advisor.architecture import Architecture
from advisor.decide import Card, remedies
from advisor.memory import FitMargin, multi_card_estimate
from advisor.profile import TrainingSettings
from advisor.variants import Combination

QUEUE_PREFIX = "loracle"


def card_class(name: str, memory_gib: float, device: str) -> str:
    """A class id from a card's name and its memory to three significant figures: 'NVIDIA
    H100 80GB HBM3', 79.65 -> 'nvidia-h100-80gb-hbm3-79p6g'; a CPU worker's budget: 'cpu-24g'
    (cards of one name and different memory are different classes)."""
    size = f"{memory_gib:.3g}".replace(".", "p") + "g"
    if device == "cpu":
        return f"cpu-{size}"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{slug}-{size}"


def queue_for(klass: str, cards: int) -> str:
    return f"{QUEUE_PREFIX}.{klass}.x{cards}"


# Tries (POST /v1/fine_tuning/jobs/{id}/try) go to their class's inference queue, which each
# worker's inference consumer takes alone, one try at a time: a try never waits behind a
# training job of the class's queues, and never holds a training worker's pool process.
INFERENCE = "infer"


def inference_queue(klass: str) -> str:
    return f"{QUEUE_PREFIX}.{INFERENCE}.{klass}"


def class_of_queue(queue: str | None) -> str | None:
    """The card class of a training queue (`loracle.<class>.x<cards>`), or None for another
    name (the default queue `loracle` of jobs stored before placement existed)."""
    match = re.fullmatch(rf"{QUEUE_PREFIX}\.(.+)\.x\d+", queue or "")
    return match.group(1) if match else None


def queues_of(klass: str, cards: int, concurrency: int) -> list[str]:
    """The queues a worker consumes: one card per job for each of its pool processes, or, when
    it runs one job at a time, any number of its cards up to all of them."""
    most = cards if concurrency == 1 else 1
    return [queue_for(klass, n) for n in range(1, max(most, 1) + 1)]


@dataclass(frozen=True)
class CardClass:
    """Registered workers with the same kind of card."""

    name: str
    card_name: str
    memory_gib: float
    bf16: bool
    device: str
    max_cards: int
    workers: int

    def card(self, count: int) -> Card:
        return Card(memory_gib=self.memory_gib, bf16=self.bf16, count=count, gpu=None)


def classes(workers: Iterable[Any]) -> list[CardClass]:
    """The card classes of live workers (rows of loracle.store.workers), smallest card first."""
    grouped: dict[str, list[Any]] = {}
    for w in workers:
        grouped.setdefault(w.card_class, []).append(w)
    out = []
    for name, rows in grouped.items():
        cards = [c for w in rows for c in w.cards]
        out.append(
            CardClass(
                name=name,
                card_name=cards[0]["name"] if cards else name,
                memory_gib=min(float(c["total_gib"]) for c in cards) if cards else 0.0,
                bf16=all(bool(c.get("bf16", True)) for c in cards),
                device=rows[0].device,
                max_cards=max(len(w.cards) if w.concurrency == 1 else 1 for w in rows),
                workers=len(rows),
            )
        )
    return sorted(out, key=lambda c: (c.memory_gib, c.name))


@dataclass(frozen=True)
class Placement:
    """Where a job goes and why: stored on the job (`placement`) and answered with it."""

    card_class: str | None
    queue: str | None
    gpus: int
    estimate_gib: float | None
    card_gib: float | None
    margin_gib: float | None
    reason: str
    waiting: bool = False
    margin: float | None = None
    margin_source: str | None = None
    strategy: str | None = None

    def as_dict(self, stored: dict[str, Any] | None = None) -> dict[str, Any]:
        """As stored on the job; `stored` is its placement `request`, kept for a re-placement."""
        return {
            "request": stored,
            "card_class": self.card_class,
            "queue": self.queue,
            "gpus": self.gpus,
            "estimate_gib": self.estimate_gib,
            "card_gib": self.card_gib,
            "margin_gib": self.margin_gib,
            "margin": self.margin,
            "margin_source": self.margin_source,
            "strategy": self.strategy,
            "reason": self.reason,
            "waiting": self.waiting,
        }


@dataclass(frozen=True)
class NoFit:
    """No registered class holds the job: the largest card, what it needs there, remedies."""

    largest: CardClass | None
    needs_gib: float | None
    gpus: int
    remedies: list[Remedy] = field(default_factory=list)
    verdict: str | None = None
    too_many_cards: bool = False

    def message(self) -> str:
        largest = self.largest
        if largest is None:
            return "no worker is registered"
        where = f"{largest.card_name} ({largest.memory_gib:g} GiB, class {largest.name})"
        if self.too_many_cards:
            return (
                f"asks for {self.gpus} cards but the most any registered worker offers a job "
                f"is {largest.max_cards} ({where}); lower resources.gpus"
            )
        text = f"needs {self.needs_gib:.1f} GiB per card; the largest registered card is {where}"
        if self.remedies:
            text += "; try: " + "; ".join(remedy_text(r) for r in self.remedies[:3])
        elif self.verdict:
            text += f"; {self.verdict}"
        return text + '; or send "placement": "wait" to queue it until a fitting worker joins'


def remedy_text(remedy: Remedy) -> str:
    """A remedy in the job API's words: the advisor's card count is `resources.gpus`."""
    gpus = remedy.settings.get("gpu_count")
    if gpus is not None:
        return f"use {gpus} cards (resources.gpus: {gpus})"
    return remedy.change


def largest(known: Sequence[CardClass], reason: str, gpus: int = 1) -> Placement:
    """The largest class, when there is nothing to estimate."""
    biggest = max(known, key=lambda c: c.memory_gib)
    return Placement(
        card_class=biggest.name,
        queue=queue_for(biggest.name, gpus),
        gpus=gpus,
        estimate_gib=None,
        card_gib=biggest.memory_gib,
        margin_gib=None,
        reason=reason,
    )


def place(
    arch: Architecture | None,
    training: TrainingSettings,
    combo: Combination,
    gpus: int,
    known: Sequence[CardClass],
    evaluation: bool = False,
    margins: Mapping[str, FitMargin] | None = None,
) -> Placement | NoFit:
    """The smallest class that holds the job on `gpus` of its cards (with the fit margin),
    or why none does. `evaluation`: the job has a validation set to evaluate. `margins`:
    the card classes that earned their own fit margin from measured jobs
    (loracle.calibration); the others keep the published one."""
    margins = margins or {}
    if not known:
        return NoFit(largest=None, needs_gib=None, gpus=gpus)
    able = [c for c in known if c.max_cards >= gpus]
    if not able:
        most = max(known, key=lambda c: (c.max_cards, c.memory_gib))
        return NoFit(largest=most, needs_gib=None, gpus=gpus, too_many_cards=True)
    if arch is None:
        # Nothing to estimate (a hub model outside the catalog): the largest card, said so.
        return largest(
            able,
            "the model's architecture is unknown, so there is no estimate: the largest card class",
            gpus,
        )
    tried = []
    for klass in able:  # smallest first
        settings = training
        if not klass.bf16 and training.precision == "bf16":
            settings = training.model_copy(update={"precision": "fp16"})
        # On several cards: the strategy the worker runs there (DDP when one card of the
        # class holds the run, else FSDP), recorded for the worker in `strategy`.
        e = multi_card_estimate(
            arch,
            settings,
            combo,
            gpus,
            klass.memory_gib,
            evaluation=evaluation,
            margin=margins.get(klass.card_name),
        )
        tried.append((klass, e, settings))
        if e.fits(klass.memory_gib):
            larger = [c.name for c in able if c.memory_gib > klass.memory_gib]
            return Placement(
                card_class=klass.name,
                queue=queue_for(klass.name, gpus),
                gpus=gpus,
                estimate_gib=round(e.total_gib, 3),
                card_gib=klass.memory_gib,
                margin_gib=round(e.headroom_gib(klass.memory_gib), 3),
                margin=e.margin.fraction,
                margin_source=e.margin.source,
                strategy=e.strategy,
                reason=f"the smallest card class that holds it: {combo.label} needs "
                f"{e.total_gib:.1f} GiB per card ({settings.precision}) plus its "
                f"{e.margin.fraction:.0%} fit margin, and {klass.card_name} has "
                f"{klass.memory_gib:g} GiB"
                + (f"; {gpus} cards with {e.strategy.upper()}" if e.strategy else "")
                + (f"; larger classes kept free ({', '.join(larger)})" if larger else ""),
            )
    top, e, settings = tried[-1]
    found, verdict = remedies(arch, settings, combo, top.card(gpus))
    return NoFit(largest=top, needs_gib=e.total_gib, gpus=gpus, remedies=found, verdict=verdict)


def request(
    model_ref: dict[str, Any],
    training: TrainingSettings,
    combo: Combination,
    gpus: int,
    evaluation: bool = False,
) -> dict[str, Any]:
    """What placing a job needs, as JSON: stored with the job so that a job waiting for a
    worker is placed again, by the dispatcher, with the estimate it was first judged by."""
    return {
        "model": model_ref or None,
        "training": training.model_dump(mode="json"),
        "variant": combo.variant,
        "combine_with": list(combo.combine_with),
        "gpus": gpus,
        "evaluation": evaluation,
    }


def place_request(
    stored: dict[str, Any],
    known: Sequence[CardClass],
    margins: Mapping[str, FitMargin] | None = None,
) -> Placement | NoFit:
    """`place` for a stored `request`."""
    from advisor.decide import resolve_model
    from advisor.profile import ModelRef
    from advisor.variants import combination

    arch = resolve_model(ModelRef.model_validate(stored["model"]))[1] if stored["model"] else None
    return place(
        arch,
        TrainingSettings.model_validate(stored["training"]),
        combination(stored["variant"], stored["combine_with"]),
        int(stored["gpus"]),
        known,
        bool(stored.get("evaluation", False)),
        margins,
    )


def waiting(reason: str, gpus: int, stored: dict[str, Any]) -> dict[str, Any]:
    """The placement of a job kept queued until a fitting worker registers."""
    return {
        **Placement(None, None, gpus, None, None, None, reason, waiting=True).as_dict(),
        "request": stored,
    }
