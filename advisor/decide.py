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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from advisor.architecture import Architecture, from_hf_config
from advisor.catalog.gpus import Gpu, find_gpu
from advisor.catalog.models import find_model
from advisor.errors import InvalidInput, Problem
from advisor.evidence import measured_evidence, measured_notes
from advisor.hyperparams import suggest
from advisor.memory import GIB, MemoryEstimate, estimate
from advisor.profile import (
    MAX_GRADIENT_ACCUMULATION,
    VARIANT_NAMES,
    EstimateRequest,
    Hardware,
    ModelRef,
    Profile,
    TrainingSettings,
    VariantName,
)
from advisor.variants import VARIANTS, Combination, combination


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


def effective_training(
    training: TrainingSettings, card: Card | None
) -> tuple[TrainingSettings, list[str]]:
    """A card without bf16 trains in fp16 (same memory; a loss scaler guards the range)."""
    notes: list[str] = []
    if card is not None and not card.bf16 and training.precision == "bf16":
        training = training.model_copy(update={"precision": "fp16"})
        notes.append(
            f"{card.gpu.name if card.gpu else 'this card'} has no bf16 (needs compute "
            "capability 8.0, Ampere or newer): planned in fp16 with loss scaling; memory is "
            "the same as bf16"
        )
    return training, notes


def _fmt(e: MemoryEstimate) -> str:
    return f"{e.total_gib:.1f} GiB"


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
        return estimate(
            self.arch,
            training or self.training,
            combo,
            gpu_count=gpus or self.card.count,
        )

    def fits(self, e: MemoryEstimate) -> bool:
        return e.fits(self.card.memory_gib)


def _remedies(ctx: _Context, combo: Combination) -> tuple[list[dict[str, Any]], str | None]:
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
            candidates.append(
                (f"use {n} cards (layer-wise model parallel)", {"gpu_count": n}, t, n)
            )

    found: list[dict[str, Any]] = []
    seen_kinds: set[str] = set()
    for change, update, settings, gpus in candidates:
        kind = next(iter(update))
        if kind in seen_kinds:
            continue  # the first (smallest) change of each kind that fits is enough
        e = ctx.estimate(combo, settings, gpus)
        if ctx.fits(e):
            seen_kinds.add(kind)
            found.append(
                {
                    "change": change,
                    "settings": update,
                    "estimate": e.as_dict(ctx.card.memory_gib),
                }
            )
    single_card = [r for r in found if "gpu_count" not in r["settings"]]
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
            {
                "change": "all memory savers together: gradient checkpointing, micro batch 1, "
                "paged 8-bit AdamW, seq_len at most 512",
                "settings": everything.model_dump(
                    include={
                        "gradient_checkpointing",
                        "micro_batch_size",
                        "gradient_accumulation_steps",
                        "optimizer",
                        "seq_len",
                    }
                ),
                "estimate": e.as_dict(ctx.card.memory_gib),
            },
        )
        return found, None
    size = f"{ctx.card.memory_gib:g} GiB"
    return found, (
        f"no single card of this size can train this model: even {combo.label} with every "
        f"memory saver needs {_fmt(e)} on a {size} card"
    )


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


def recommend(profile: Profile) -> dict[str, Any]:
    card, model_name, arch = _resolve_all(profile.hardware, profile.model, card_required=True)
    assert card is not None
    training, notes = effective_training(profile.training, card)
    ctx = _Context(model_name, arch, card, training, notes)
    goal = profile.goal

    singles = {v: ctx.estimate(Combination(v)) for v in VARIANT_NAMES}
    lora, qlora = singles["lora"], singles["qlora"]
    memory_evidence = (
        f"QLoRA needs {_fmt(qlora)}, LoRA {_fmt(lora)}, the card has "
        f"{card.memory_gib:g} GiB" + (f" (x{card.count})" if card.count > 1 else "")
    )

    path: list[dict[str, Any]] = []

    def ask(question: str, answer: bool, evidence: str, decides: VariantName | None) -> None:
        path.append(
            {
                "question": question,
                "answer": "yes" if answer else "no",
                "evidence": evidence + measured_evidence(decides),
                "decides": decides,
            }
        )

    pick: VariantName | None = None
    is_memory = goal.priority == "memory"
    ask(
        "Is the main constraint memory?",
        is_memory,
        f"priority is '{goal.priority}'; {memory_evidence}",
        "qlora" if is_memory else None,
    )
    if is_memory:
        pick = "qlora"
    quality = goal.priority == "quality"
    quality_yes = quality and goal.lora_quality_gap
    quality_evidence = (
        f"priority is '{goal.priority}', lora_quality_gap is {str(goal.lora_quality_gap).lower()}"
    )
    if quality and not goal.lora_quality_gap:
        quality_evidence += (
            ": quality matters but LoRA has shown no gap yet. Start simple with LoRA; "
            "try DoRA when LoRA shows a gap"
        )
    ask(
        "Is quality critical and does LoRA show a gap?",
        quality_yes,
        quality_evidence,
        "dora" if quality_yes and pick is None else None,
    )
    if quality_yes and pick is None:
        pick = "dora"
    speed = goal.priority == "speed"
    ask(
        "Is training speed the most important thing?",
        speed,
        f"priority is '{goal.priority}'",
        "loraplus" if speed and pick is None else None,
    )
    if speed and pick is None:
        pick = "loraplus"
    ask(
        "None in particular?",
        pick is None,
        "standard LoRA still works well for most jobs"
        if pick is None
        else "a constraint was named above",
        "lora" if pick is None else None,
    )
    if pick is None:
        pick = "lora"

    chosen = Combination(pick)
    chosen_est = singles[pick]
    if ctx.fits(chosen_est):
        path.append(
            {
                "question": "Does it fit the card?",
                "answer": "yes",
                "evidence": f"{VARIANTS[pick].title} needs {_fmt(chosen_est)}; "
                f"{card.describe()} leaves {card.memory_gib - chosen_est.total_gib:.1f} GiB",
                "decides": None,
            }
        )
    elif pick != "qlora":
        idea: tuple[VariantName, ...] = (pick,) if pick in ("dora", "loraplus") else ()
        with_idea = Combination("qlora", idea)
        with_idea_est = ctx.estimate(with_idea) if idea else qlora
        if ctx.fits(with_idea_est):
            chosen, chosen_est = with_idea, with_idea_est
            evidence = (
                f"{VARIANTS[pick].title} needs {_fmt(singles[pick])} but {card.describe()} "
                f"has less; {with_idea.label} needs {_fmt(with_idea_est)}"
            )
        elif idea and ctx.fits(qlora):
            chosen, chosen_est = Combination("qlora"), qlora
            evidence = (
                f"{VARIANTS[pick].title} needs {_fmt(singles[pick])} and {with_idea.label} "
                f"{_fmt(with_idea_est)}, more than {card.describe()}; plain QLoRA needs "
                f"{_fmt(qlora)}, so {VARIANTS[pick].title}'s idea is dropped"
            )
        else:
            chosen, chosen_est = with_idea, with_idea_est
            evidence = (
                f"{VARIANTS[pick].title} needs {_fmt(singles[pick])}; even "
                f"{with_idea.label} needs {_fmt(with_idea_est)}, more than {card.describe()}"
            )
        path.append(
            {
                "question": "Does it fit the card?",
                "answer": "no",
                # The evidence for QLoRA, and for the combination when the idea was kept.
                "evidence": evidence
                + "; memory became binding"
                + measured_evidence("qlora")
                + (
                    measured_evidence("+".join((chosen.variant, *chosen.combine_with)))
                    if chosen.combine_with
                    else ""
                ),
                "decides": "qlora",
            }
        )
    else:
        path.append(
            {
                "question": "Does it fit the card?",
                "answer": "no",
                "evidence": f"QLoRA needs {_fmt(qlora)}, more than {card.describe()}",
                "decides": None,
            }
        )

    fits = ctx.fits(chosen_est)
    remedies: list[dict[str, Any]] = []
    verdict = None
    if not fits:
        remedies, verdict = _remedies(ctx, chosen)

    estimates = {v: e.as_dict(card.memory_gib) for v, e in singles.items()}
    return {
        "variant": chosen.variant,
        "combine_with": list(chosen.combine_with),
        "label": chosen.label,
        "fits": fits,
        "headroom_gib": round(card.memory_gib - chosen_est.total_gib, 3),
        "model": {"name": model_name, **arch.summary()},
        "hardware": card.as_dict(),
        "precision": training.precision,
        "decision_path": path,
        "estimate": chosen_est.as_dict(card.memory_gib),
        "estimates": estimates,
        "hyperparameters": suggest(arch, training, chosen, training.precision),
        "remedies": remedies,
        "verdict": verdict,
        "notes": notes + _tradeoff_notes(singles, chosen),
    }


# Published step-time figures, cited whether or not loracle has measured its own (those come
# from advisor/data/evidence.json through advisor/evidence.py, in notes of their own).
QLORA_STEP_TIME = (
    "a 7B Llama 2 finetune took 2.79 h with QLoRA against 1.85 h with 16-bit LoRA "
    "(S. Raschka, 'Practical Tips for Finetuning LLMs Using LoRA', Ahead of AI, 2023-11-19)"
)
DORA_STEP_TIME = (
    "about 20% in its author's LLaMA-7B/13B finetunes "
    "(github.com/huggingface/peft/pull/1474, 2024-02-29)"
)


def _tradeoff_notes(singles: dict[VariantName, MemoryEstimate], chosen: Combination) -> list[str]:
    """One note per variant's trade-off, each with its figures and where they come from."""
    lora, qlora, dora = singles["lora"], singles["qlora"], singles["dora"]
    extra_params = dora.trainable_params - lora.trainable_params
    notes = [
        f"QLoRA stores the base in NF4 with double quantization, about 4.127 bits per "
        f"weight: weights {qlora.breakdown.weights / GIB:.1f} GiB instead of "
        f"{lora.breakdown.weights / GIB:.1f} GiB (Dettmers et al. 2023, arXiv:2305.14314, "
        "section 3); its steps are slower because bitsandbytes dequantizes every 4-bit "
        f"weight in the forward pass and again in backward: {QLORA_STEP_TIME}",
        f"DoRA adds {extra_params:,} magnitude parameters "
        f"(+{100 * extra_params / max(lora.trainable_params, 1):.1f}% over LoRA's adapter) and "
        f"needs {dora.total_gib - lora.total_gib:+.1f} GiB here (Liu et al. 2024, "
        "arXiv:2402.09353); every step recomputes the norm of each adapted weight, so its "
        f"steps are slower than LoRA's: {DORA_STEP_TIME}; peft docs: faster and leaner with "
        "lora_dropout 0, the default we give",
        "LoRA+ is memory-neutral: the same tensors as LoRA "
        f"({_fmt(singles['loraplus'])}), only B's learning rate is 16x A's "
        "(Hayou et al. 2024, arXiv:2402.12354)",
    ]
    notes += measured_notes(chosen.variant, chosen.combine_with)
    if chosen.variant != "lora" or chosen.combine_with:
        notes.append(
            f"Start simple: standard LoRA needs {_fmt(lora)} here; if it fits and meets the "
            "goal, it is the baseline to beat (design document: 'start with the simple version')"
        )
    return notes


def estimate_only(req: EstimateRequest) -> dict[str, Any]:
    """POST /v1/estimates with the analytic method."""
    card, model_name, arch = _resolve_all(req.hardware, req.model, card_required=False)
    training, notes = effective_training(req.training, card)
    combo = combination(req.variant, req.combine_with)
    e = estimate(arch, training, combo, gpu_count=card.count if card else 1)
    out = e.as_dict(card.memory_gib if card else None)
    out["model"] = {"name": model_name, **arch.summary()}
    out["precision"] = training.precision
    out["notes"] = notes
    return out
