"""The decision tree of the design document, with memory as a hard constraint on top.

The seed's questions, in order:
  1. Is the main constraint memory?                 -> QLoRA
  2. Is quality critical and does LoRA show a gap?  -> DoRA
  3. Is training speed the most important thing?    -> LoRA+
  4. None in particular?                            -> LoRA
Then: if the pick does not fit the card but QLoRA does, the answer is QLoRA,
with the pick's idea combined where it combines (QLoRA + DoRA, QLoRA + LoRA+),
and the path says memory became binding. When nothing fits, remedies list the
smallest changes that make the chosen combination fit.

When the goal says where the adapter will be served (``goal.serve_with``), the serving
table (`advisor.serving`) adds to the path: an idea the server cannot load as trained stays
when the goal asked for it (DoRA, for critical quality with a LoRA gap), with a note to merge
before serving; an idea the advice would only suggest (rsLoRA) is left out there; the rank
is kept within the largest the server loads (vLLM's --max-lora-rank); and a last step says
how the server takes the adapter. Without it the answer is exactly what it was before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from advisor.answers import (
    CardSummary,
    Estimate,
    EstimateAnswer,
    Hyperparameters,
    ModelSummary,
    Note,
    PathStep,
    Recommendation,
    Remedy,
)
from advisor.architecture import Architecture, from_hf_config
from advisor.catalog.gpus import Gpu, find_gpu
from advisor.catalog.models import find_model
from advisor.errors import InvalidInput, Problem
from advisor.evidence import measured_evidence, measured_notes
from advisor.hyperparams import suggest
from advisor.memory import GIB, MemoryEstimate, multi_card_estimate
from advisor.profile import (
    MAX_GRADIENT_ACCUMULATION,
    EstimateRequest,
    Goal,
    Hardware,
    ModelRef,
    Profile,
    TrainingSettings,
)
from advisor.serving import PEFT_MERGE, SERVERS, Server
from advisor.variants import (
    BASE_VARIANT,
    LORAPLUS_LR_RATIO,
    MEMORY_VARIANT,
    VARIANT_NAMES,
    VARIANTS,
    Combination,
    combination,
    suggested_ideas,
    with_ideas,
)

FIT_QUESTION = "Does it fit the card?"


@dataclass(frozen=True)
class Card:
    """The memory one card offers and whether it computes in bf16."""

    memory_gib: float
    bf16: bool
    count: int
    gpu: Gpu | None

    def describe(self) -> str:
        name = self.gpu.name if self.gpu else "the card"
        many = f"{self.count} x " if self.count > 1 else ""
        return f"{many}{name} ({self.memory_gib:g} GiB{' each' if self.count > 1 else ''})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.gpu.id if self.gpu else None,
            "name": self.gpu.name if self.gpu else None,
            "memory_gib": self.memory_gib,
            "bf16": self.bf16,
            "count": self.count,
        }


def resolve_card(hw: Hardware, required: bool = True) -> Card | None:
    if hw.gpu is None and hw.gpu_memory_gib is None:
        if required:
            raise InvalidInput(
                [
                    Problem(
                        "hardware",
                        "give hardware.gpu (a catalog id such as 'rtx-4090') or "
                        "hardware.gpu_memory_gib (the card's memory in GiB)",
                    )
                ]
            )
        return None
    gpu = find_gpu(hw.gpu) if hw.gpu is not None else None
    memory = hw.gpu_memory_gib if hw.gpu_memory_gib is not None else gpu.memory_gib  # type: ignore[union-attr]
    return Card(memory_gib=memory, bf16=gpu.bf16 if gpu else True, count=hw.gpu_count, gpu=gpu)


def resolve_model(ref: ModelRef) -> tuple[str, Architecture]:
    if ref.name is not None:
        entry = find_model(ref.name)
        return entry.id, entry.architecture
    assert ref.config is not None
    arch = from_hf_config(ref.config)
    name = ref.config.get("_name_or_path")
    if not isinstance(name, str) or not name.strip():
        name = f"custom {arch.model_type}"
    return name, arch


# Where effective_training's notes come from, for the recommendation's typed notes.
TRAINING_NOTE_SOURCE = "GPU catalog (advisor/catalog), NVIDIA's compute capabilities"


def effective_training(
    training: TrainingSettings, card: Card | None
) -> tuple[TrainingSettings, list[str]]:
    """A card without bf16 trains in fp16 (same memory; a loss scaler guards the range). The
    notes are plain sentences, as estimates carry them (the memory tracer appends its own)."""
    notes: list[str] = []
    if card is not None and not card.bf16 and training.precision == "bf16":
        training = training.model_copy(update={"precision": "fp16"})
        notes.append(
            f"{card.gpu.name if card.gpu else 'This card'} has no bf16 (it needs compute "
            "capability 8.0, Ampere or newer): planned in fp16 with loss scaling, which takes "
            "the same memory as bf16."
        )
    return training, notes


def _fmt(e: MemoryEstimate) -> str:
    return f"{e.total_gib:.1f} GiB"


def _margin(e: MemoryEstimate) -> str:
    """The fit margin as the evidence names it: "fits" asks for total x (1 + margin)."""
    return f"the {e.margin.fraction:.0%} fit margin"


@dataclass
class _Context:
    model_name: str
    arch: Architecture
    card: Card
    training: TrainingSettings
    notes: list[str]

    def estimate(
        self, combo: Combination, training: TrainingSettings | None = None, gpus: int | None = None
    ) -> MemoryEstimate:
        # Several cards: the strategy the worker would run on them (DDP when one card holds
        # the run, else FSDP).
        return multi_card_estimate(
            self.arch,
            training or self.training,
            combo,
            gpus or self.card.count,
            self.card.memory_gib,
        )

    def fits(self, e: MemoryEstimate) -> bool:
        return e.fits(self.card.memory_gib)


def _remedies(ctx: _Context, combo: Combination) -> tuple[list[Remedy], str | None]:
    """Single changes, smallest first, that make ``combo`` fit; each with its estimate.

    Smallest first: of each kind the least change that fits (the largest micro batch, the
    longest sequence, the fewest cards), and the kinds in the order they disturb the run:
    gradient checkpointing and accumulation for micro batch leave the training the same
    (they cost time), 8-bit optimizer state and shorter sequences change it, more cards
    change the hardware. When no change on its own fits one card, all of them together
    come first."""
    t = ctx.training
    candidates: list[tuple[str, dict[str, Any], TrainingSettings, int]] = []

    def add(change: str, update: dict[str, Any], gpus: int | None = None) -> None:
        candidates.append((change, update, t.model_copy(update=update), gpus or ctx.card.count))

    if not t.gradient_checkpointing:
        add("turn on gradient checkpointing", {"gradient_checkpointing": True})
    # Smaller micro batches, largest first, each with the accumulation that keeps the
    # effective batch exactly: divisors of the micro batch (8 -> 4, 2, 1; 6 -> 3, 2, 1).
    mb, ga = t.micro_batch_size, t.gradient_accumulation_steps
    for smaller in range(mb - 1, 0, -1):
        more = ga * (mb // smaller)
        if mb % smaller or more > MAX_GRADIENT_ACCUMULATION:
            continue
        add(
            f"micro_batch_size {smaller} with gradient_accumulation_steps {more} "
            "(same effective batch)",
            {"micro_batch_size": smaller, "gradient_accumulation_steps": more},
        )
    if t.optimizer in ("adamw", "adamw_8bit"):
        add("use the paged 8-bit AdamW optimizer", {"optimizer": "paged_adamw_8bit"})
    seq = t.seq_len
    while seq > 256:
        seq //= 2
        add(f"shorten seq_len to {seq}", {"seq_len": seq})
    for n in (2, 4, 8):
        if n > ctx.card.count:
            # More cards help only sharded: DDP holds the whole run on every card. A job asks
            # for them with resources.gpus: n, and the worker runs FSDP over them.
            candidates.append(
                (
                    f"use {n} cards (resources.gpus: {n}; FSDP shards the model over them)",
                    {"gpu_count": n},
                    t,
                    n,
                )
            )

    found: list[Remedy] = []
    seen_kinds: set[str] = set()
    for change, update, settings, gpus in candidates:
        kind = next(iter(update))
        if kind in seen_kinds:
            continue  # the first (smallest) change of each kind that fits is enough
        e = ctx.estimate(combo, settings, gpus)
        if ctx.fits(e):
            seen_kinds.add(kind)
            found.append(
                Remedy(
                    change=change,
                    settings=update,
                    estimate=_estimate_answer(e, ctx.card.memory_gib),
                )
            )
    single_card = [r for r in found if "gpu_count" not in r.settings]
    if single_card:
        return found, None
    # No single change works on one card: try every memory saver at once.
    everything = t.model_copy(
        update={
            "gradient_checkpointing": True,
            "micro_batch_size": 1,
            "gradient_accumulation_steps": t.micro_batch_size * t.gradient_accumulation_steps,
            "optimizer": "paged_adamw_8bit" if t.optimizer != "sgd" else "sgd",
            "seq_len": min(t.seq_len, 512),
        }
    )
    e = ctx.estimate(combo, everything)
    if ctx.fits(e):
        found.insert(
            0,
            Remedy(
                change="all memory savers together: gradient checkpointing, micro batch 1, "
                "paged 8-bit AdamW, seq_len at most 512",
                settings=everything.model_dump(
                    include={
                        "gradient_checkpointing",
                        "micro_batch_size",
                        "gradient_accumulation_steps",
                        "optimizer",
                        "seq_len",
                    }
                ),
                estimate=_estimate_answer(e, ctx.card.memory_gib),
            ),
        )
        return found, None
    size = f"{ctx.card.memory_gib:g} GiB"
    return found, (
        f"no single card of this size can train this model: even {combo.label} with every "
        f"memory saver needs {_fmt(e)} on a {size} card"
    )


def remedies(
    arch: Architecture, training: TrainingSettings, combo: Combination, card: Card
) -> tuple[list[Remedy], str | None]:
    """The remedies of `_remedies` for a combination on a card (and its count): what the
    fleet's placement offers when no registered card fits a job."""
    training, notes = effective_training(training, card)
    return _remedies(_Context("", arch, card, training, notes), combo)


def _resolve_all(
    hw: Hardware | None, ref: ModelRef, card_required: bool
) -> tuple[Card | None, str, Architecture]:
    """Resolve card and model together, so one answer reports the problems of both."""
    problems: list[Problem] = []
    card: Card | None = None
    try:
        card = resolve_card(hw, required=card_required) if hw is not None else None
    except InvalidInput as exc:
        problems += exc.problems
    try:
        model_name, arch = resolve_model(ref)
    except InvalidInput as exc:
        problems += exc.problems
    if problems:
        raise InvalidInput(problems)
    return card, model_name, arch


@dataclass(frozen=True)
class Question:
    """One question of the design document's tree. Asked in order, the first "yes" decides
    the variant whose constraint it names (`constraint`, matched against the registry);
    the last question answers "yes" when none before it did."""

    text: str
    constraint: str
    asks: Callable[[Goal], bool]
    evidence: Callable[[Goal], str]
    readme: str
    """Its line in the README's tree, after the variant's title."""
    readme_note: str = ""
    """A second line under it in the README, when the answer needs one."""

    @property
    def decides(self) -> str:
        return next(n for n, spec in VARIANTS.items() if spec.constraint == self.constraint)


def _quality_evidence(goal: Goal) -> str:
    text = (
        f"priority is '{goal.priority}', lora_quality_gap is {str(goal.lora_quality_gap).lower()}"
    )
    if goal.priority == "quality" and not goal.lora_quality_gap:
        text += (
            ": quality matters but LoRA has shown no gap yet. Start simple with LoRA; "
            "try DoRA when LoRA shows a gap"
        )
    return text


QUESTIONS: tuple[Question, ...] = (
    Question(
        "Is the main constraint memory?",
        "memory",
        asks=lambda goal: goal.priority == "memory",
        evidence=lambda goal: f"priority is '{goal.priority}'",
        readme="base in 4-bit NF4",
    ),
    Question(
        "Is quality critical and does LoRA show a gap?",
        "quality",
        asks=lambda goal: goal.priority == "quality" and goal.lora_quality_gap,
        evidence=_quality_evidence,
        readme="magnitude and direction apart",
        readme_note="Quality without a known gap answers LoRA: start simple.",
    ),
    Question(
        "Is training speed the most important thing?",
        "speed",
        asks=lambda goal: goal.priority == "speed",
        evidence=lambda goal: f"priority is '{goal.priority}'",
        readme=f"B learns {LORAPLUS_LR_RATIO:g}x faster than A",
    ),
    Question(
        "None in particular?",
        "none",
        asks=lambda goal: True,
        evidence=lambda goal: "standard LoRA still works well for most jobs",
        readme="",
    ),
)


def tree_markdown() -> str:
    """The decision tree as the README shows it, produced from `QUESTIONS`."""
    lines = []
    for number, q in enumerate(QUESTIONS, 1):
        title = VARIANTS[q.decides].title
        detail = f" ({q.readme})" if q.readme else ""
        lines.append(f"{number}. {q.text} → **{title}**{detail}.")
        if q.readme_note:
            lines.append(f"   {q.readme_note}")
    return "\n".join(lines)


def _pick(goal: Goal) -> str:
    """The variant the tree's first "yes" decides (the last question always answers yes)."""
    return next(q.decides for q in QUESTIONS if q.asks(goal))


def _walk(
    goal: Goal, memory_evidence: str, serve: Server | None = None
) -> tuple[str, list[PathStep]]:
    """The tree's questions in order: the variant the first "yes" decides, and every step.
    With a server, the question of the goal's priority says when its idea cannot be served
    as trained there."""
    pick: str | None = None
    path = []
    for q in QUESTIONS:
        last = q is QUESTIONS[-1]
        yes = pick is None if last else q.asks(goal)
        decides = q.decides if yes and pick is None else None
        evidence = q.evidence(goal) if (yes or not last) else "a constraint was named above"
        if q.constraint == "memory":
            evidence += f"; {memory_evidence}"
        idea = serve.ideas.get(q.decides) if serve is not None else None
        if idea is not None and not idea.loads and q.constraint == goal.priority:
            evidence += f"; {idea.text[0].lower()}{idea.text[1:].rstrip('.')} ({idea.source})"
        path.append(
            PathStep(
                question=q.text,
                answer="yes" if yes else "no",
                evidence=evidence + measured_evidence(decides),
                decides=decides,
            )
        )
        pick = pick or decides
    assert pick is not None  # the last question always decides
    return pick, path


def _fit_step(
    ctx: _Context, pick: str, singles: dict[str, MemoryEstimate]
) -> tuple[Combination, MemoryEstimate, PathStep]:
    """ "Does it fit the card?": the pick when it fits, else the memory variant with the
    pick's idea layered on where that fits, else plain memory variant, else the closest."""
    card = ctx.card
    memory = MEMORY_VARIANT
    pick_est = singles[pick]
    title = VARIANTS[pick].title
    if ctx.fits(pick_est):
        step = PathStep(
            question=FIT_QUESTION,
            answer="yes",
            evidence=f"{title} needs {_fmt(pick_est)}; {card.describe()} leaves "
            f"{pick_est.headroom_gib(card.memory_gib):.1f} GiB beyond {_margin(pick_est)}",
            decides=None,
        )
        return Combination(pick), pick_est, step
    if pick == memory:
        step = PathStep(
            question=FIT_QUESTION,
            answer="no",
            evidence=f"{title} needs {_fmt(pick_est)}, more than {card.describe()} holds "
            f"with {_margin(pick_est)}",
            decides=None,
        )
        return Combination(pick), pick_est, step
    idea = (pick,) if VARIANTS[pick].idea is not None else ()
    with_idea = combination(memory, idea)
    with_idea_est = ctx.estimate(with_idea) if idea else singles[memory]
    memory_title = VARIANTS[memory].title
    if ctx.fits(with_idea_est):
        chosen, chosen_est = with_idea, with_idea_est
        evidence = (
            f"{title} needs {_fmt(pick_est)} but {card.describe()} has less with "
            f"{_margin(pick_est)}; "
            f"{with_idea.label} needs {_fmt(with_idea_est)}"
        )
    elif idea and ctx.fits(singles[memory]):
        chosen, chosen_est = Combination(memory), singles[memory]
        evidence = (
            f"{title} needs {_fmt(pick_est)} and {with_idea.label} {_fmt(with_idea_est)}, more "
            f"than {card.describe()} holds with {_margin(pick_est)}; plain {memory_title} "
            f"needs {_fmt(singles[memory])}, so "
            f"{title}'s idea is dropped"
        )
    else:
        chosen, chosen_est = with_idea, with_idea_est
        evidence = (
            f"{title} needs {_fmt(pick_est)}; even {with_idea.label} needs "
            f"{_fmt(with_idea_est)}, more than {card.describe()} holds with "
            f"{_margin(with_idea_est)}"
        )
    # The evidence for the memory variant, and for the combination when the idea was kept.
    evidence += "; memory became binding" + measured_evidence(memory)
    if chosen.combine_with:
        evidence += measured_evidence(chosen.evidence_key)
    step = PathStep(question=FIT_QUESTION, answer="no", evidence=evidence, decides=memory)
    return chosen, chosen_est, step


def _suggestions(
    ctx: _Context, chosen: Combination, chosen_est: MemoryEstimate, serve: Server | None = None
) -> tuple[Combination, MemoryEstimate, list[PathStep]]:
    """Ideas the registry suggests for these settings whatever the tree chose (rsLoRA from
    rank 64), layered on the choice, each a step of the path with its reason. An idea the
    server cannot load as trained is left out (it was only a suggestion), unless the adapter
    is merged before serving anyway."""
    steps = []
    merging = serve is not None and bool(serve.needs_merge(chosen))
    for name, reason in suggested_ideas(chosen, ctx.training):
        if serve is not None and not serve.ideas[name].loads and not merging:
            idea = serve.ideas[name]
            steps.append(
                PathStep(
                    question=f"Do the settings call for {VARIANTS[name].title}?",
                    answer="no",
                    evidence=f"{reason}; but the adapter is to be served with "
                    f"{serve.title}: {idea.text} ({idea.source}). Left out: a suggestion is "
                    "not worth a merge",
                    decides=None,
                )
            )
            continue
        chosen = with_ideas(chosen, [name])
        steps.append(
            PathStep(
                question=f"Do the settings call for {VARIANTS[name].title}?",
                answer="yes",
                evidence=reason + measured_evidence(name),
                decides=name,
            )
        )
    if any(s.decides for s in steps):  # an idea was layered on
        chosen_est = ctx.estimate(chosen)
    return chosen, chosen_est, steps


def _estimate_answer(e: MemoryEstimate, card_gib: float | None) -> Estimate:
    return Estimate.model_validate(e.as_dict(card_gib))


def _serving_rank(
    training: TrainingSettings, serve: Server, pick: str
) -> tuple[TrainingSettings, PathStep | None]:
    """A rank above the largest the server loads is lowered to that largest, when the tree's
    pick is to be served as an adapter (a pick merged before serving has no rank limit)."""
    largest = serve.largest_rank
    rank = training.lora_rank
    if largest is None or rank <= largest or serve.needs_merge(Combination(pick)):
        return training, None
    step = PathStep(
        question=f"Does {serve.title} load an adapter of rank {rank}?",
        answer="no",
        evidence=f"{serve.title}'s largest max-LoRA-rank setting is {largest} ({serve.source}): "
        f"the advice trains rank {largest}, so the adapter loads as it is; rank {rank} would "
        "have to be merged before serving",
        decides=None,
    )
    return training.model_copy(update={"lora_rank": largest}), step


def _serving_step(serve: Server, chosen: Combination, rank: int, pick: str) -> PathStep:
    """The path's last step: whether the server takes the recommended adapter as it is, and
    how to start it (or why and how to merge first)."""
    question = serve.question.format(label=chosen.label)
    need = serve.needs_merge(chosen)
    if need:
        why = " ".join(f"{serve.ideas[n].text} ({serve.ideas[n].source})" for n in need)
        kept = [
            f"{VARIANTS[n].title} stays, as the goal asked for it ("
            + next(q.text for q in QUESTIONS if q.decides == n)
            + " yes)"
            if n == pick
            else f"{VARIANTS[n].title} stays, as the merge applies it too"
            for n in need
        ]
        return PathStep(
            question=question,
            answer="no",
            evidence=f"{why} {'; '.join(kept)}: merge {chosen.label} before serving",
            decides=None,
        )
    limit = serve.rank_limit(rank)
    if serve.max_lora_ranks and limit is None:
        return PathStep(
            question=question,
            answer="no",
            evidence=f"rank {rank} is above {serve.title}'s largest max-LoRA-rank setting, "
            f"{serve.largest_rank} ({serve.source}): merge before serving",
            decides=None,
        )
    return PathStep(
        question=question,
        answer="yes",
        evidence=serve.serves.format(rank=rank, max_rank=limit),
        decides=None,
    )


def _serving_notes(serve: Server, chosen: Combination, rank: int) -> list[Note]:
    """How to serve the recommended adapter there, then what the server does with each idea
    of it, each with its source."""
    merge = bool(serve.needs_merge(chosen)) or (
        bool(serve.max_lora_ranks) and serve.rank_limit(rank) is None
    )
    notes = [
        Note(text=serve.merge, source=PEFT_MERGE)
        if merge
        else Note(
            text=serve.serves.format(rank=rank, max_rank=serve.rank_limit(rank)),
            source=serve.source,
        )
    ]
    if merge and chosen.quantize_base:
        into_16_bit = SERVERS["merged"].ideas[MEMORY_VARIANT]
        notes.append(Note(text=into_16_bit.text, source=into_16_bit.source))
    notes += [
        Note(text=serve.ideas[n].text, source=serve.ideas[n].source)
        for n in VARIANT_NAMES
        if n in chosen.names
    ]
    return notes


def recommend(profile: Profile) -> Recommendation:
    card, model_name, arch = _resolve_all(profile.hardware, profile.model, card_required=True)
    assert card is not None
    training, notes = effective_training(profile.training, card)
    goal = profile.goal
    serve = SERVERS[goal.serve_with] if goal.serve_with is not None else None
    rank_step = None
    if serve is not None:
        training, rank_step = _serving_rank(training, serve, _pick(goal))
    ctx = _Context(model_name, arch, card, training, notes)

    singles = {v: ctx.estimate(Combination(v)) for v in VARIANT_NAMES}
    lora, qlora = singles[BASE_VARIANT], singles[MEMORY_VARIANT]
    memory_evidence = (
        f"{VARIANTS[MEMORY_VARIANT].title} needs {_fmt(qlora)}, "
        f"{VARIANTS[BASE_VARIANT].title} {_fmt(lora)}, the card has "
        f"{card.memory_gib:g} GiB" + (f" (x{card.count})" if card.count > 1 else "")
    )
    pick, path = _walk(goal, memory_evidence, serve)
    if rank_step is not None:
        path.append(rank_step)
    chosen, chosen_est, fit = _fit_step(ctx, pick, singles)
    chosen, chosen_est, suggested = _suggestions(ctx, chosen, chosen_est, serve)
    # Suggestions before the fit: what fits is the final combination (a suggested idea that
    # changed memory would be calibrated and estimated above; today's only one changes none).
    path += [*suggested, fit]
    serving_notes: list[Note] = []
    if serve is not None:
        path.append(_serving_step(serve, chosen, training.lora_rank, pick))
        serving_notes = _serving_notes(serve, chosen, training.lora_rank)

    fits = ctx.fits(chosen_est)
    remedies: list[Remedy] = []
    verdict = None
    if not fits:
        remedies, verdict = _remedies(ctx, chosen)
    return Recommendation(
        variant=chosen.variant,
        combine_with=list(chosen.combine_with),
        label=chosen.label,
        fits=fits,
        headroom_gib=round(chosen_est.headroom_gib(card.memory_gib), 3),
        model=ModelSummary(name=model_name, **arch.summary()),
        hardware=CardSummary(**card.as_dict()),
        precision=training.precision,
        decision_path=path,
        estimate=_estimate_answer(chosen_est, card.memory_gib),
        estimates={v: _estimate_answer(e, card.memory_gib) for v, e in singles.items()},
        hyperparameters=Hyperparameters.model_validate(
            suggest(arch, training, chosen, training.precision)
        ),
        remedies=remedies,
        verdict=verdict,
        notes=[Note(text=n, source=TRAINING_NOTE_SOURCE) for n in notes]
        + _tradeoff_notes(singles, chosen)
        + serving_notes,
    )


# Published figures, cited whether or not loracle has measured its own (those come from
# advisor/data/evidence.json through advisor/evidence.py, in notes of their own).
QLORA_PAPER = "Dettmers et al. 2023, QLoRA, arXiv:2305.14314, section 3"
QLORA_STEP_TIME = (
    "S. Raschka, 'Practical Tips for Finetuning LLMs Using LoRA', Ahead of AI, 2023-11-19",
    "a 7B Llama 2 finetune took 2.79 h with QLoRA against 1.85 h with 16-bit LoRA",
)
DORA_PAPER = "Liu et al. 2024, DoRA, arXiv:2402.09353"
DORA_STEP_TIME = (
    "its author's LLaMA-7B/13B finetunes, github.com/huggingface/peft/pull/1474, 2024-02-29; "
    "peft documentation",
    "about 20%",
)
LORAPLUS_PAPER = "Hayou et al. 2024, LoRA+, arXiv:2402.12354"


def _tradeoff_notes(singles: dict[str, MemoryEstimate], chosen: Combination) -> list[Note]:
    """Each variant's trade-offs, one short note per fact with its figures and source."""
    lora, qlora, dora = singles["lora"], singles["qlora"], singles["dora"]
    extra_params = dora.trainable_params - lora.trainable_params
    qlora_time_source, qlora_time = QLORA_STEP_TIME
    dora_time_source, dora_time = DORA_STEP_TIME
    notes = [
        Note(
            text="QLoRA stores the base in NF4 with double quantization, about 4.127 bits per "
            f"weight: weights {qlora.breakdown.weights / GIB:.1f} GiB instead of "
            f"{lora.breakdown.weights / GIB:.1f} GiB.",
            source=QLORA_PAPER,
        ),
        Note(
            text="QLoRA's steps are slower, as bitsandbytes dequantizes every 4-bit weight in "
            f"the forward pass and again in backward: {qlora_time}.",
            source=qlora_time_source,
        ),
        Note(
            text=f"DoRA adds {extra_params:,} magnitude parameters "
            f"(+{100 * extra_params / max(lora.trainable_params, 1):.1f}% over LoRA's adapter) "
            f"and needs {dora.total_gib - lora.total_gib:+.1f} GiB here.",
            source=DORA_PAPER,
        ),
        Note(
            text=f"DoRA's steps are slower than LoRA's, {dora_time}, as every step recomputes "
            "the norm of each adapted weight; lora_dropout 0, the default given, is faster "
            "and leaner.",
            source=dora_time_source,
        ),
        Note(
            text=f"LoRA+ is memory-neutral: the same tensors as LoRA ({_fmt(singles['loraplus'])}"
            "), only B's learning rate is 16x A's.",
            source=LORAPLUS_PAPER,
        ),
    ]
    notes += measured_notes(chosen.variant, chosen.combine_with)
    if chosen.variant != "lora" or chosen.combine_with:
        notes.append(
            Note(
                text=f"Start simple: standard LoRA needs {_fmt(lora)} here; if it fits and meets "
                "the goal, it is the baseline to beat.",
                source="design document: 'start with the simple version'",
            )
        )
    return notes


def estimate_only(req: EstimateRequest) -> EstimateAnswer:
    """POST /v1/estimates with the analytic method."""
    card, model_name, arch = _resolve_all(req.hardware, req.model, card_required=False)
    training, notes = effective_training(req.training, card)
    combo = combination(req.variant, req.combine_with)
    e = multi_card_estimate(
        arch, training, combo, card.count if card else 1, card.memory_gib if card else None
    )
    return EstimateAnswer.model_validate(
        {
            **e.as_dict(card.memory_gib if card else None),
            "model": {"name": model_name, **arch.summary()},
            "precision": training.precision,
            "notes": notes,
        }
    )
