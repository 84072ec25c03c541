"""The variant combinations the benchmark runs, keyed as in its results file ("qlora+loraplus":
QLoRA with LoRA+ combined), and their names, which come from the advisor's variant registry."""

from __future__ import annotations

from advisor.variants import Combination

VARIANTS = ("lora", "loraplus", "dora", "qlora", "qlora+loraplus", "qlora+dora")
"""Every key the benchmark runs, in the order its tables and plots list them."""


def split(key: str) -> tuple[str, tuple[str, ...]]:
    """The variant and the ideas combined with it: "qlora+loraplus" -> ("qlora", ("loraplus",))."""
    variant, *ideas = key.split("+")
    return variant, tuple(ideas)


def combination(key: str) -> Combination:
    return Combination(*split(key))  # type: ignore[arg-type]


def label(key: str) -> str:
    """The name a reader knows: "qlora+loraplus" -> "QLoRA + LoRA+"."""
    return combination(key).label
