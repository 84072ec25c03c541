"""What to change when a run has run out of memory: the remedies that keep the batch, in order.

A one-card job that raises CUDA's out-of-memory error is tried again (worker/oom.py), each
time with one change, the next this module names for the settings the run has now. Every
change keeps what the job learns from: the effective batch (micro_batch_size x
gradient_accumulation_steps) and so the optimizer steps over the same samples. The order is
the cost to the run, least first:

1. gradient checkpointing on (skipped when on): activations fall from every tensor of every
   block to one per block, for about 30% more step time; the training is otherwise the same;
2. a smaller micro batch with more accumulation (while the micro batch is above 1): half of
   it (for an odd one, its largest divisor below half: 3 -> 1, 9 -> 3), the accumulation
   multiplied by what the micro batch was divided by, within `MAX_GRADIENT_ACCUMULATION`.
   Activations shrink in proportion; the same samples make each optimizer step, in more,
   smaller forward passes. It repeats, micro batch 1 being its end;
3. the memory variant of the registry (QLoRA: the base's linear layers in 4-bit NF4, a
   quarter of their 16-bit size), with the job's other ideas kept (QLoRA + DoRA, QLoRA +
   LoRA+) where the registry's validator combines them. It changes the model being trained
   (a quantized base), so it is offered only to a job whose variant the advisor chose
   (`auto`) or that allows it (`allow_variant_change`); otherwise it is listed, not allowed.

Nothing here measures or estimates: the worker knows the run did not fit, and the remedies are
what changes least. `decide.remedies` is the advisor's other list, for a plan that is estimated
not to fit before it runs (with more kinds: shorter sequences, 8-bit optimizer state, more
cards, which change what the job trains or where).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from advisor.errors import InvalidInput
from advisor.profile import MAX_GRADIENT_ACCUMULATION
from advisor.variants import BASE_VARIANT, MEMORY_VARIANT, VARIANTS, Combination, combination

RemedyKind = Literal["gradient_checkpointing", "micro_batch", "quantize_base"]

# Why the memory variant is not tried for a job that named its variant.
NOT_ALLOWED = (
    "changes the variant the job named: allowed when its variant is 'auto' or it sets "
    "allow_variant_change: true"
)


class _Run(Protocol):
    """What the remedies read of a run's settings (the worker's TrainingPlan, the advisor's
    TrainingSettings): structural, so this module imports neither."""

    @property
    def micro_batch_size(self) -> int: ...

    @property
    def gradient_accumulation_steps(self) -> int: ...

    @property
    def gradient_checkpointing(self) -> bool: ...


@dataclass(frozen=True)
class BatchKeepingRemedy:
    """One change of a run's settings that keeps its effective batch."""

    kind: RemedyKind
    change: str
    """The change in words, with its values (for events and error messages)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The plan fields it sets and their new values (`variant` and `combine_with` for the
    memory variant)."""
    allowed: bool = True
    """False when the job does not allow it (the memory variant for a job that named its
    variant); `why_not` says why."""
    why_not: str = ""

    def describe(self) -> str:
        return self.change if self.allowed else f"{self.change} ({self.why_not})"


def smaller_micro_batch(micro_batch: int) -> int | None:
    """The micro batch step 2 goes to: the largest divisor of `micro_batch` at most half of
    it (4 -> 2, 6 -> 3, 3 -> 1), so the effective batch stays exact; None at 1."""
    return next((d for d in range(micro_batch // 2, 0, -1) if micro_batch % d == 0), None)


def memory_variant_of(combo: Combination) -> Combination | None:
    """`combo` with its base quantized (the registry's memory variant, QLoRA), its other
    ideas kept; None when it is quantized already or the registry refuses the combination."""
    if combo.quantize_base:
        return None
    ideas = [name for name in (combo.variant, *combo.combine_with) if name != BASE_VARIANT]
    try:
        return combination(MEMORY_VARIANT, ideas)
    except InvalidInput:
        return None


def batch_keeping_remedies(
    run: _Run, combo: Combination, variant_change_allowed: bool
) -> list[BatchKeepingRemedy]:
    """Every remedy that applies to `run` (with the combination `combo`) now, in the order
    they are tried (module docstring). The memory variant is listed with `allowed=False` when
    `variant_change_allowed` is False."""
    found: list[BatchKeepingRemedy] = []
    if not run.gradient_checkpointing:
        found.append(
            BatchKeepingRemedy(
                "gradient_checkpointing",
                "turn on gradient checkpointing",
                {"gradient_checkpointing": True},
            )
        )
    micro, accumulation = run.micro_batch_size, run.gradient_accumulation_steps
    smaller = smaller_micro_batch(micro)
    if smaller is not None and accumulation * (micro // smaller) <= MAX_GRADIENT_ACCUMULATION:
        more = accumulation * (micro // smaller)
        found.append(
            BatchKeepingRemedy(
                "micro_batch",
                f"micro_batch_size {micro} -> {smaller} with gradient_accumulation_steps "
                f"{accumulation} -> {more} (same effective batch, {micro * accumulation})",
                {"micro_batch_size": smaller, "gradient_accumulation_steps": more},
            )
        )
    target = memory_variant_of(combo)
    if target is not None:
        found.append(
            BatchKeepingRemedy(
                "quantize_base",
                f"{target.label} instead of {combo.label}: the base in 4-bit NF4 "
                f"({VARIANTS[MEMORY_VARIANT].title})",
                {"variant": target.variant, "combine_with": list(target.combine_with)},
                allowed=variant_change_allowed,
                why_not="" if variant_change_allowed else NOT_ALLOWED,
            )
        )
    return found


def next_batch_keeping_remedy(
    run: _Run, combo: Combination, variant_change_allowed: bool
) -> BatchKeepingRemedy | None:
    """The remedy the next try applies: the first allowed one, or None when none is left."""
    return next(
        (r for r in batch_keeping_remedies(run, combo, variant_change_allowed) if r.allowed),
        None,
    )
