"""The benchmark names its variant combinations as the advisor's registry does."""

from __future__ import annotations

from bench.evidence.variants import VARIANTS, label, split


def test_keys_split_into_a_variant_and_the_ideas_combined_with_it():
    assert split("lora") == ("lora", ())
    assert split("qlora+loraplus") == ("qlora", ("loraplus",))


def test_labels_come_from_the_registry():
    assert [label(key) for key in VARIANTS] == [
        "LoRA",
        "LoRA+",
        "DoRA",
        "QLoRA",
        "QLoRA + LoRA+",
        "QLoRA + DoRA",
    ]
