"""The remedies a run that ran out of memory is retried with (advisor/oom.py): their order,
that each keeps the effective batch, and that QLoRA is offered only where the job allows a
change of variant."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from advisor.oom import (
    NOT_ALLOWED,
    batch_keeping_remedies,
    memory_variant_of,
    next_batch_keeping_remedy,
    smaller_micro_batch,
)
from advisor.profile import MAX_GRADIENT_ACCUMULATION, TrainingSettings
from advisor.variants import Combination, combination, combinations


@dataclass(frozen=True)
class Run:
    micro_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False

    def apply(self, settings: dict) -> Run:
        fields = {k: v for k, v in settings.items() if k in Run.__dataclass_fields__}
        return Run(**{**self.__dict__, **fields})


LORA = combination("lora")


def test_the_order_is_checkpointing_then_micro_batch_then_qlora():
    remedies = batch_keeping_remedies(Run(4, 1, False), LORA, variant_change_allowed=True)
    assert [r.kind for r in remedies] == ["gradient_checkpointing", "micro_batch", "quantize_base"]
    assert remedies[0].settings == {"gradient_checkpointing": True}
    assert remedies[1].settings == {"micro_batch_size": 2, "gradient_accumulation_steps": 2}
    assert remedies[2].settings == {"variant": "qlora", "combine_with": []}
    assert all(r.allowed for r in remedies)


def test_asked_again_after_each_change_the_worker_walks_the_order_to_its_end():
    run, combo, applied = Run(8, 3, False), LORA, []
    while (remedy := next_batch_keeping_remedy(run, combo, True)) is not None:
        applied.append(remedy.settings)
        run = run.apply(remedy.settings)
        if "variant" in remedy.settings:
            combo = combination(remedy.settings["variant"], remedy.settings["combine_with"])
        # Every step keeps the effective batch.
        assert run.micro_batch_size * run.gradient_accumulation_steps == 24
    assert applied == [
        {"gradient_checkpointing": True},
        {"micro_batch_size": 4, "gradient_accumulation_steps": 6},
        {"micro_batch_size": 2, "gradient_accumulation_steps": 12},
        {"micro_batch_size": 1, "gradient_accumulation_steps": 24},
        {"variant": "qlora", "combine_with": []},
    ]
    assert batch_keeping_remedies(run, combo, variant_change_allowed=True) == []


def test_checkpointing_already_on_is_skipped_and_micro_batch_one_cannot_shrink():
    assert [r.kind for r in batch_keeping_remedies(Run(2, 1, True), LORA, True)] == [
        "micro_batch",
        "quantize_base",
    ]
    assert [r.kind for r in batch_keeping_remedies(Run(1, 8, True), LORA, True)] == [
        "quantize_base"
    ]


@pytest.mark.parametrize(
    ("micro", "smaller"), [(1, None), (2, 1), (3, 1), (4, 2), (6, 3), (9, 3), (7, 1), (12, 6)]
)
def test_the_smaller_micro_batch_divides_it_so_the_effective_batch_is_exact(micro, smaller):
    assert smaller_micro_batch(micro) == smaller
    if smaller is not None:
        remedy = batch_keeping_remedies(Run(micro, 5, True), LORA, False)[0]
        new = remedy.settings
        assert new["micro_batch_size"] * new["gradient_accumulation_steps"] == micro * 5


def test_the_accumulation_stays_within_the_profiles_limit():
    at_limit = Run(2, MAX_GRADIENT_ACCUMULATION, True)
    assert [r.kind for r in batch_keeping_remedies(at_limit, LORA, True)] == ["quantize_base"]
    below = Run(2, MAX_GRADIENT_ACCUMULATION // 2, True)
    assert batch_keeping_remedies(below, LORA, True)[0].settings == {
        "micro_batch_size": 1,
        "gradient_accumulation_steps": MAX_GRADIENT_ACCUMULATION,
    }


def test_qlora_is_listed_but_not_allowed_when_the_job_named_its_variant():
    remedies = batch_keeping_remedies(Run(1, 4, True), LORA, variant_change_allowed=False)
    assert [(r.kind, r.allowed) for r in remedies] == [("quantize_base", False)]
    assert remedies[0].why_not == NOT_ALLOWED
    assert "allow_variant_change" in remedies[0].describe()
    assert next_batch_keeping_remedy(Run(1, 4, True), LORA, variant_change_allowed=False) is None
    # Allowed, the same remedy is the next one.
    allowed = next_batch_keeping_remedy(Run(1, 4, True), LORA, variant_change_allowed=True)
    assert allowed is not None and allowed.kind == "quantize_base"


def test_not_allowed_qlora_never_comes_before_what_is_allowed():
    remedy = next_batch_keeping_remedy(Run(4, 1, False), LORA, variant_change_allowed=False)
    assert remedy is not None and remedy.kind == "gradient_checkpointing"


@pytest.mark.parametrize(
    ("variant", "ideas", "expected"),
    [
        ("lora", [], ("qlora", ())),
        ("dora", [], ("qlora", ("dora",))),
        ("loraplus", [], ("qlora", ("loraplus",))),
        ("dora", ["loraplus"], ("qlora", ("dora", "loraplus"))),
        ("rslora", ["dora"], ("qlora", ("dora", "rslora"))),
    ],
)
def test_qlora_keeps_the_jobs_other_ideas(variant, ideas, expected):
    target = memory_variant_of(combination(variant, ideas))
    assert target is not None
    assert (target.variant, target.combine_with) == expected
    remedy = batch_keeping_remedies(Run(1, 1, True), combination(variant, ideas), True)[-1]
    assert remedy.settings == {"variant": expected[0], "combine_with": list(expected[1])}


def test_a_quantized_run_gets_no_qlora_remedy():
    for combo in combinations():
        if combo.quantize_base:
            assert memory_variant_of(combo) is None
            kinds = [r.kind for r in batch_keeping_remedies(Run(1, 1, True), combo, True)]
            assert kinds == []


def test_every_combination_the_registry_allows_has_a_valid_qlora_remedy():
    for combo in combinations():
        target = memory_variant_of(combo)
        if target is not None:
            assert target.quantize_base
            assert combination(target.variant, target.combine_with) == target
            assert combo.names <= target.names


def test_the_advisors_own_training_settings_are_read_too():
    settings = TrainingSettings(micro_batch_size=2, gradient_checkpointing=False)
    kinds = [r.kind for r in batch_keeping_remedies(settings, Combination("lora"), False)]
    assert kinds == ["gradient_checkpointing", "micro_batch", "quantize_base"]
