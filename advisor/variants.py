"""The LoRA family as data: one spec per variant, and how they combine.

The rest of the advisor reads these flags instead of branching on names, so a
new variant is one entry here plus its memory terms.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from advisor.errors import InvalidInput, Problem
from advisor.profile import VARIANT_NAMES, VariantName


@dataclass(frozen=True)
class VariantSpec:
    name: VariantName
    title: str
    constraint: str  # the one constraint this variant targets, in the seed's words
    quantize_base: bool = False  # base linears stored as NF4 (bitsandbytes)
    dora: bool = False  # magnitude/direction decomposition (peft use_dora)
    loraplus: bool = False  # B gets loraplus_lr_ratio x A's learning rate
    paper: str = ""
    summary: str = ""


VARIANTS: dict[VariantName, VariantSpec] = {
    "lora": VariantSpec(
        name="lora",
        title="LoRA",
        constraint="none in particular",
        paper="Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models, "
        "arXiv:2106.09685",
        summary="Frozen base in 16-bit, trainable low-rank A and B per adapted layer.",
    ),
    "qlora": VariantSpec(
        name="qlora",
        title="QLoRA",
        constraint="memory",
        quantize_base=True,
        paper="Dettmers et al. 2023, QLoRA: Efficient Finetuning of Quantized LLMs, "
        "arXiv:2305.14314",
        summary="Base linears stored in 4-bit NF4 with double quantization, dequantized "
        "to the compute dtype on the fly; adapters as LoRA.",
    ),
    "dora": VariantSpec(
        name="dora",
        title="DoRA",
        constraint="quality",
        dora=True,
        paper="Liu et al. 2024, DoRA: Weight-Decomposed Low-Rank Adaptation, arXiv:2402.09353",
        summary="Each adapted weight split into a learned magnitude vector and a direction "
        "that LoRA updates.",
    ),
    "loraplus": VariantSpec(
        name="loraplus",
        title="LoRA+",
        constraint="speed",
        loraplus=True,
        paper="Hayou et al. 2024, LoRA+: Efficient Low Rank Adaptation of Large Models, "
        "arXiv:2402.12354",
        summary="LoRA with B's learning rate a fixed ratio (16 by default) above A's.",
    ),
}


@dataclass(frozen=True)
class Combination:
    """A variant plus the further ideas combined with it (e.g. QLoRA + LoRA+)."""

    variant: VariantName
    combine_with: tuple[VariantName, ...] = ()

    @cached_property
    def members(self) -> tuple[VariantSpec, ...]:
        return (VARIANTS[self.variant], *(VARIANTS[v] for v in self.combine_with))

    @cached_property
    def quantize_base(self) -> bool:
        return any(m.quantize_base for m in self.members)

    @cached_property
    def dora(self) -> bool:
        return any(m.dora for m in self.members)

    @cached_property
    def loraplus(self) -> bool:
        return any(m.loraplus for m in self.members)

    @cached_property
    def label(self) -> str:
        return " + ".join(m.title for m in self.members)


def combination(
    variant: VariantName, combine_with: Iterable[VariantName] = (), field: str = "combine_with"
) -> Combination:
    """Validate a combination. Every pair combines (the seed: "they aren't mutually
    incompatible"), but naming the same idea twice is a mistake worth reporting."""
    extra = tuple(combine_with)
    problems = []
    if variant not in VARIANT_NAMES:
        problems.append(Problem("variant", f"must be one of {list(VARIANT_NAMES)}", variant))
    for v in extra:
        if v not in VARIANT_NAMES:
            problems.append(Problem(field, f"{v!r} is not one of {list(VARIANT_NAMES)}", v))
    if variant in extra:
        problems.append(
            Problem(field, f"repeats the variant itself ({variant!r}); remove it", variant)
        )
    if len(set(extra)) != len(extra):
        problems.append(Problem(field, "names a variant twice; list each once", list(extra)))
    if "lora" in extra:
        problems.append(
            Problem(field, "'lora' is the base of every variant and adds nothing; remove it")
        )
    if problems:
        raise InvalidInput(problems)
    # Canonical order: the registry's, so equal combinations compare and cache equal.
    ordered = tuple(v for v in VARIANT_NAMES if v in extra)
    return Combination(variant, ordered)
