from __future__ import annotations

import pytest

from advisor.catalog.gpus import GPUS, find_gpu
from advisor.catalog.models import find_model
from advisor.errors import UnknownName


def test_at_least_twenty_cards_with_the_common_ids():
    ids = {g.id for g in GPUS}
    assert len(ids) == len(GPUS) >= 20
    for required in (
        "t4",
        "l4",
        "a10g",
        "rtx-3090",
        "rtx-4090",
        "rtx-5090",
        "a100-40gb",
        "a100-80gb",
        "h100-80gb",
        "h200",
        "l40s",
        "mi300x",
    ):
        assert required in ids


@pytest.mark.parametrize(
    "typed,expected",
    [
        ("RTX 4090", "rtx-4090"),
        ("rtx_4090", "rtx-4090"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("4090", "rtx-4090"),
        ("A100-80GB", "a100-80gb"),
        ("a100 80gb", "a100-80gb"),
        ("H100", "h100-80gb"),
        ("Tesla T4", "t4"),
        ("MI300X", "mi300x"),
    ],
)
def test_matching_forgives_case_spaces_and_punctuation(typed, expected):
    assert find_gpu(typed).id == expected


@pytest.mark.parametrize(
    "printed,expected",
    [
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("NVIDIA A100 80GB PCIe", "a100-80gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA A100-PCIE-40GB", "a100-40gb"),
        ("NVIDIA H100 80GB HBM3", "h100-80gb"),
        ("NVIDIA H100 PCIe", "h100-80gb"),
        ("NVIDIA H200", "h200"),
        ("Tesla V100-SXM2-16GB", "v100-16gb"),
        ("Tesla V100-PCIE-32GB", "v100-32gb"),
        ("Tesla P100-PCIE-16GB", "p100"),
        ("Tesla T4", "t4"),
        ("NVIDIA A10G", "a10g"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA RTX A6000", "rtx-a6000"),
        ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada"),
        ("NVIDIA GeForce RTX 3090", "rtx-3090"),
        ("AMD Instinct MI300X", "mi300x"),
    ],
)
def test_names_as_nvidia_smi_prints_them(printed, expected):
    """`nvidia-smi --query-gpu=name --format=csv` (and rocm-smi's product name) pasted as is."""
    assert find_gpu(printed).id == expected


def test_unknown_card_suggests_the_closest():
    with pytest.raises(UnknownName) as info:
        find_gpu("rtx 4O90")
    assert "rtx-4090" in info.value.problems[0].message
    assert info.value.problems[0].field == "hardware.gpu"


def test_cards_without_bf16():
    for gpu_id in ("t4", "v100-16gb", "p100", "rtx-2080-ti"):
        assert find_gpu(gpu_id).bf16 is False
    for gpu_id in ("a100-80gb", "rtx-4090", "h100-80gb", "mi300x"):
        assert find_gpu(gpu_id).bf16 is True


def test_model_lookup_forgives_org_and_case():
    assert find_model("llama-2-7b-hf").id == "meta-llama/Llama-2-7b-hf"
    assert find_model("QWEN/qwen2.5-7b").id == "Qwen/Qwen2.5-7B"


def test_unknown_model_suggests_names():
    with pytest.raises(UnknownName) as info:
        find_model("llama-3-8b")
    assert "meta-llama/Meta-Llama-3-8B" in info.value.problems[0].message
