"""The LoRA family as data: the one registry every other module reads.

Each variant is declared once, here: its name and title, the paper, the constraint of the
design document it answers, the one idea it switches on (a 4-bit base, magnitude and
direction learned apart, a faster learning rate for B, a rank-stable scale), what that idea
sets in peft's ``LoraConfig``, in transformers' ``BitsAndBytesConfig`` and in the optimizer,
its default hyperparameters, the memory terms it adds, its evidence key, and when the
advice suggests it. Everything else is derived from this table: the API's literals and
titles, the combination validator, the advisor's suggestions, the worker's configs (through
`loracle.recipe`), the memory model's flags, the calibration grid and the benchmarks.
peft's method registry (``peft/tuners/<method>/`` plus ``PEFT_TYPE_TO_CONFIG_MAPPING``) is
the pattern: one declaration per method, looked up by name.

A *combination* is a variant plus further ideas layered on it (QLoRA + LoRA+). Plain LoRA is
the base every idea builds on, so it switches nothing on and is never layered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from advisor.errors import InvalidInput, Problem

# -- defaults every variant starts from ---------------------------------------------------------

DEFAULT_LORA_RANK = 16
# alpha = 2r keeps the update scale alpha/r at 2 whatever the rank (a common default in peft
# examples and Raschka's LoRA experiments).
LORA_ALPHA_PER_RANK = 2
DEFAULT_LORA_DROPOUT = 0.05
# LoRA+ (Hayou et al. 2024, section 5): a ratio lr_B / lr_A of 2^4 works across the LLaMA
# experiments; peft's create_loraplus_optimizer takes it as loraplus_lr_ratio.
LORAPLUS_LR_RATIO = 16.0
# rsLoRA (Kalajdzievski 2023, arXiv:2312.03732): with alpha/r the update shrinks as the rank
# grows and learning stalls above rank ~64; alpha/sqrt(r) keeps it rank-stable. Below 64 the
# two scales differ little, so the advice suggests it from this rank on.
RSLORA_FROM_RANK = 64


class _Settings(Protocol):
    """What a suggestion rule reads of the training settings (advisor.profile.TrainingSettings
    or the worker's plan): kept structural so this module imports neither."""

    @property
    def lora_rank(self) -> int: ...


@dataclass(frozen=True)
class Suggestion:
    """When the advice layers an idea on whatever the decision tree chose, and why."""

    applies: Callable[[_Settings], bool]
    reason: Callable[[_Settings], str]


@dataclass(frozen=True)
class VariantSpec:
    """One variant of the LoRA family and the idea it switches on."""

    name: str
    title: str
    constraint: str
    """The constraint this variant answers: the design document's memory, quality, speed and
    none, and rsLoRA's rank stability (not a question of the tree: a suggestion)."""
    paper: str
    summary: str
    idea: str | None = None
    """The one mechanism it switches on, in a line; None for plain LoRA, the base."""
    published: str = ""
    """The design document's claim for it, with its paper: what loracle's evidence tests."""
    lora_config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Fields it sets in peft's LoraConfig (``use_dora``, ``use_rslora``)."""
    quantize_base: bool = False
    """The base's linear layers load as 4-bit NF4 with double quantization (bitsandbytes, via
    transformers' BitsAndBytesConfig): the memory model's NF4 weights and dequantization
    temporaries."""
    magnitude_vector: bool = False
    """A learned magnitude per output feature of each adapted layer (DoRA): the memory model's
    extra trainable parameters and DoRA's fp32 backward copies."""
    loraplus_lr_ratio: float | None = None
    """lora_B's learning rate over lora_A's; set, the optimizer is peft's
    create_loraplus_optimizer."""
    learning_rate_factor: float = 1.0
    """The advised base learning rate (lora_A's) relative to plain LoRA's."""
    lora_dropout: float | None = None
    """Its default dropout when it differs from DEFAULT_LORA_DROPOUT."""
    suggestion: Suggestion | None = None
    """When the advice adds this idea to any recommendation, and why."""
    calibrated: bool = True
    """Traced in the calibration grid (tests/advisor/data/trace_grid.json) and measured by the
    GPU check. False only for an idea that adds no tensor and no optimizer group of its own,
    whose memory is its base's by construction (a test holds that equality instead)."""

    @property
    def evidence_key(self) -> str:
        """Its key in advisor/data/evidence.json (combinations join keys with '+')."""
        return self.name


VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        VariantSpec(
            name="lora",
            title="LoRA",
            constraint="none",
            paper="Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models, "
            "arXiv:2106.09685",
            summary="Frozen base in 16-bit, trainable low-rank A and B per adapted layer.",
            published="published: standard LoRA works well for most jobs "
            "(design document; LoRA, arXiv:2106.09685)",
        ),
        VariantSpec(
            name="qlora",
            title="QLoRA",
            constraint="memory",
            paper="Dettmers et al. 2023, QLoRA: Efficient Finetuning of Quantized LLMs, "
            "arXiv:2305.14314",
            summary="Base linears stored in 4-bit NF4 with double quantization, dequantized "
            "to the compute dtype on the fly; adapters as LoRA.",
            idea="base weights frozen in 4-bit NF4 with double quantization (bitsandbytes)",
            published="published: a 7B model in about 6 GB instead of about 16 GB, quality "
            "almost untouched (design document; QLoRA, arXiv:2305.14314)",
            quantize_base=True,
        ),
        VariantSpec(
            name="dora",
            title="DoRA",
            constraint="quality",
            paper="Liu et al. 2024, DoRA: Weight-Decomposed Low-Rank Adaptation, arXiv:2402.09353",
            summary="Each adapted weight split into a learned magnitude vector and a direction "
            "that LoRA updates.",
            idea="weights split into magnitude and direction; LoRA adapts the direction",
            published="published: a few percent better than LoRA with under 5% more "
            "parameters (design document; DoRA, arXiv:2402.09353)",
            lora_config=MappingProxyType({"use_dora": True}),
            magnitude_vector=True,
            # With dropout peft cannot reuse the base layer's output: it recomputes it from
            # the full weight and keeps a 16-bit copy of every adapted weight for backward
            # (peft DoraLinearLayer.forward, base_result None). peft's docs: faster and
            # leaner with dropout 0.
            lora_dropout=0.0,
        ),
        VariantSpec(
            name="loraplus",
            title="LoRA+",
            constraint="speed",
            paper="Hayou et al. 2024, LoRA+: Efficient Low Rank Adaptation of Large Models, "
            "arXiv:2402.12354",
            summary="LoRA with B's learning rate a fixed ratio (16 by default) above A's.",
            idea="lora_B learns loraplus_lr_ratio times faster than lora_A",
            published="published: the target quality about 1.5-2x sooner "
            "(design document; LoRA+, arXiv:2402.12354)",
            loraplus_lr_ratio=LORAPLUS_LR_RATIO,
            # With B at 16x, A's rate goes below plain LoRA's: the LoRA+ authors advise
            # "slightly smaller (e.g. by a factor of 2) than typical vanilla LoRA learning
            # rates" (github.com/nikhil-ghosh-berkeley/loraplus, README). loracle's own
            # benchmark agrees in direction: reused at LoRA's rate LoRA+ overshot, and its
            # best rate was 8x lower than LoRA's on a 2.4M-parameter model (BENCHMARKS.md).
            learning_rate_factor=0.5,
        ),
        VariantSpec(
            name="rslora",
            title="rsLoRA",
            constraint="rank stability",
            paper="Kalajdzievski 2023, A Rank Stabilization Scaling Factor for Fine-Tuning "
            "with LoRA, arXiv:2312.03732",
            summary="LoRA scaled by alpha/sqrt(r) instead of alpha/r, so higher ranks keep "
            "learning; the same tensors as LoRA.",
            idea="adapter scale alpha/sqrt(r) instead of alpha/r (peft use_rslora)",
            published="published: with alpha/r learning slows as the rank grows; alpha/sqrt(r) "
            "lets higher ranks reach lower loss (rsLoRA, arXiv:2312.03732)",
            lora_config=MappingProxyType({"use_rslora": True}),
            # A different constant in front of B @ A: the same tensors as LoRA.
            calibrated=False,
            suggestion=Suggestion(
                applies=lambda t: t.lora_rank >= RSLORA_FROM_RANK,
                reason=lambda t: (
                    f"rank {t.lora_rank} is {RSLORA_FROM_RANK} or more: rsLoRA scales the "
                    f"update by alpha/sqrt(r) instead of alpha/r, which at this rank is "
                    f"{t.lora_rank**0.5:.0f}x larger and keeps the rank's extra capacity "
                    "learning, at no memory cost (Kalajdzievski 2023, arXiv:2312.03732; peft "
                    "LoraConfig use_rslora)"
                ),
            ),
        ),
    )
}

VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)
IDEA_NAMES: tuple[str, ...] = tuple(n for n, spec in VARIANTS.items() if spec.idea is not None)
# Every LoraConfig switch some variant sets (use_dora, use_rslora), off unless a member sets it:
# the advice states each one, on or off.
LORA_CONFIG_SWITCHES: dict[str, bool] = {
    key: False for spec in VARIANTS.values() for key in spec.lora_config
}
CALIBRATED_VARIANTS: tuple[str, ...] = tuple(n for n, spec in VARIANTS.items() if spec.calibrated)
BASE_VARIANT = next(n for n, spec in VARIANTS.items() if spec.idea is None)
MEMORY_VARIANT = next(n for n, spec in VARIANTS.items() if spec.constraint == "memory")

# The literal types of the API, the plan and the advisor, derived from the registry. A type
# checker cannot follow a literal built at run time, so it sees `str`; pydantic sees the
# literal, validates against it and lists its values in the OpenAPI schema.
if TYPE_CHECKING:
    VariantName = str
    IdeaName = str
    VariantOrAuto = str
else:
    VariantName = Literal[VARIANT_NAMES]
    IdeaName = Literal[IDEA_NAMES]
    VariantOrAuto = Literal[(*VARIANT_NAMES, "auto")]


def title_of(key: str) -> str:
    """The title of a variant or of an evidence key of a combination ('qlora+dora' -> 'QLoRA
    + DoRA'); unknown keys are returned as given."""
    names = key.split("+")
    if not all(n in VARIANTS for n in names):
        return key
    return " + ".join(VARIANTS[n].title for n in names)


@dataclass(frozen=True)
class Combination:
    """A variant plus the further ideas combined with it (e.g. QLoRA + LoRA+). Build one with
    `combination`, which validates; the constructor trusts its input."""

    variant: str
    combine_with: tuple[str, ...] = ()

    @cached_property
    def members(self) -> tuple[VariantSpec, ...]:
        return (VARIANTS[self.variant], *(VARIANTS[v] for v in self.combine_with))

    @cached_property
    def names(self) -> frozenset[str]:
        """Every idea switched on (plain LoRA contributes none)."""
        return frozenset(m.name for m in self.members if m.idea is not None)

    @cached_property
    def quantize_base(self) -> bool:
        return any(m.quantize_base for m in self.members)

    @cached_property
    def dora(self) -> bool:
        return any(m.magnitude_vector for m in self.members)

    @cached_property
    def loraplus(self) -> bool:
        return self.loraplus_lr_ratio is not None

    @cached_property
    def loraplus_lr_ratio(self) -> float | None:
        return next((m.loraplus_lr_ratio for m in self.members if m.loraplus_lr_ratio), None)

    @cached_property
    def learning_rate_factor(self) -> float:
        factor = 1.0
        for m in self.members:
            factor *= m.learning_rate_factor
        return factor

    @cached_property
    def lora_dropout(self) -> float:
        """The default adapter dropout: the lowest any member asks for (DoRA's 0 wins)."""
        asked = [m.lora_dropout for m in self.members if m.lora_dropout is not None]
        return min(asked, default=DEFAULT_LORA_DROPOUT)

    @cached_property
    def label(self) -> str:
        return " + ".join(m.title for m in self.members)

    @cached_property
    def evidence_key(self) -> str:
        return "+".join(m.evidence_key for m in self.members)

    def lora_config(
        self,
        rank: int,
        alpha: int | None = None,
        dropout: float | None = None,
        target_modules: str | list[str] = "all-linear",
    ) -> dict[str, Any]:
        """The keyword arguments of peft's ``LoraConfig`` for this combination: the advice's
        ``lora_config`` and the worker's config are both this dict."""
        fields: dict[str, Any] = {
            "r": rank,
            "lora_alpha": LORA_ALPHA_PER_RANK * rank if alpha is None else alpha,
            "lora_dropout": self.lora_dropout if dropout is None else dropout,
            "target_modules": target_modules,
            **LORA_CONFIG_SWITCHES,
            "bias": "none",
            "task_type": "CAUSAL_LM",
        }
        for member in self.members:
            fields.update(member.lora_config)
        return fields

    def bnb_config(self, compute_dtype: str) -> dict[str, Any] | None:
        """The keyword arguments of transformers' ``BitsAndBytesConfig`` (``compute_dtype`` a
        torch dtype name such as 'bfloat16'), or None when the base is not quantized."""
        if not self.quantize_base:
            return None
        return {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": compute_dtype,
        }


def combination(
    variant: str, combine_with: Iterable[str] = (), field: str = "combine_with"
) -> Combination:
    """The one combination validator: the advisor, the API and the worker's plan all call it.

    Every idea combines with every other (the seed: "they aren't mutually incompatible").
    Refused, each with its fix: an unknown name, an idea named twice or repeating the
    variant, the base ('lora') layered on something, and ideas layered on the base: LoRA plus
    DoRA *is* DoRA, so the request names the first idea as the variant. One spelling per run
    keeps the estimate, the stored job and the trained adapter under one name."""
    extra = tuple(combine_with)
    problems = []
    if variant not in VARIANTS:
        problems.append(Problem("variant", f"must be one of {list(VARIANT_NAMES)}", variant))
    for v in extra:
        if v not in VARIANTS:
            problems.append(Problem(field, f"{v!r} is not one of {list(IDEA_NAMES)}", v))
    if variant in extra:
        problems.append(
            Problem(field, f"repeats the variant itself ({variant!r}); remove it", variant)
        )
    twice = sorted({v for v in extra if extra.count(v) > 1})
    if twice:
        problems.append(
            Problem(field, f"lists {twice} more than once; name each idea once", list(extra))
        )
    if BASE_VARIANT in extra:
        problems.append(
            Problem(
                field,
                f"{BASE_VARIANT!r} is the base of every variant and adds nothing; remove it",
            )
        )
    ideas = [v for v in extra if v in VARIANTS and v != BASE_VARIANT]
    if variant == BASE_VARIANT and ideas and not problems:
        first, *rest = ideas
        problems.append(
            Problem(
                field,
                f"variant {BASE_VARIANT!r} plus {ideas} is the variant {first!r}; set "
                f"variant={first!r} and combine_with={rest}",
                list(extra),
            )
        )
    if problems:
        raise InvalidInput(problems)
    # Canonical order, the registry's, so equal combinations compare and cache equal.
    return Combination(variant, tuple(v for v in VARIANT_NAMES if v in extra))


def combinations() -> list[Combination]:
    """Every combination the validator allows: plain LoRA, and each idea's variant with every
    subset of the other ideas (canonical order). The tests that compare the advice with the
    worker run over all of them."""
    from itertools import combinations as subsets

    out = [Combination(BASE_VARIANT)]
    for variant in IDEA_NAMES:
        others = [i for i in IDEA_NAMES if i != variant]
        for size in range(len(others) + 1):
            out += [combination(variant, extra) for extra in subsets(others, size)]
    return out


def suggested_ideas(combo: Combination, training: _Settings) -> list[tuple[str, str]]:
    """The ideas the advice layers on ``combo`` for these settings, each with its reason
    (rsLoRA from rank 64), those ``combo`` already has left out."""
    return [
        (name, spec.suggestion.reason(training))
        for name, spec in VARIANTS.items()
        if spec.suggestion is not None
        and name not in combo.names
        and spec.suggestion.applies(training)
    ]


def with_ideas(combo: Combination, ideas: Iterable[str]) -> Combination:
    """``combo`` with more ideas layered on (on plain LoRA the first becomes the variant)."""
    extra = [i for i in ideas if i not in combo.names]
    if not extra:
        return combo
    if combo.variant == BASE_VARIANT:
        first, *rest = extra
        return combination(first, [*combo.combine_with, *rest])
    return combination(combo.variant, [*combo.combine_with, *extra])
