"""GPU catalog: memory and bf16 support of common training cards.

``memory_gib`` is the total one card exposes to CUDA/ROCm, in GiB, as
``nvidia-smi``/``rocm-smi`` report it (slightly under the marketing figure in
GB for most cards: an "80 GB" H100 SXM shows 81559 MiB). bf16 needs NVIDIA
compute capability 8.0 (Ampere) or newer; T4, V100, P100 and Turing cards lack
it and are planned in fp16. Figures are the vendors' published specifications.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from advisor.catalog._match import closest, normalize
from advisor.errors import Problem, UnknownName


@dataclass(frozen=True)
class Gpu:
    id: str
    name: str
    vendor: str
    memory_gib: float
    bf16: bool
    architecture: str
    aliases: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["aliases"] = list(self.aliases)
        return d


# Aliases include the product names nvidia-smi prints ("NVIDIA A100-SXM4-80GB", "Tesla
# V100-SXM2-16GB", "NVIDIA H100 80GB HBM3"), so a name pasted from it is found.
GPUS: tuple[Gpu, ...] = (
    Gpu("t4", "NVIDIA T4 16GB", "nvidia", 15.0, False, "Turing", ("tesla-t4", "colab-t4")),
    Gpu(
        "p100",
        "NVIDIA Tesla P100 16GB",
        "nvidia",
        15.9,
        False,
        "Pascal",
        ("tesla-p100", "p100-pcie-16gb", "p100-sxm2-16gb"),
    ),
    Gpu(
        "v100-16gb",
        "NVIDIA V100 16GB",
        "nvidia",
        15.8,
        False,
        "Volta",
        ("v100", "v100-sxm2-16gb", "v100-pcie-16gb"),
    ),
    Gpu(
        "v100-32gb",
        "NVIDIA V100 32GB",
        "nvidia",
        31.7,
        False,
        "Volta",
        ("v100-sxm2-32gb", "v100-pcie-32gb", "v100s-pcie-32gb"),
    ),
    Gpu("rtx-2080-ti", "NVIDIA GeForce RTX 2080 Ti", "nvidia", 10.7, False, "Turing"),
    Gpu("rtx-3060", "NVIDIA GeForce RTX 3060 12GB", "nvidia", 11.8, True, "Ampere"),
    Gpu("rtx-3080", "NVIDIA GeForce RTX 3080 10GB", "nvidia", 9.8, True, "Ampere"),
    Gpu("rtx-3090", "NVIDIA GeForce RTX 3090", "nvidia", 24.0, True, "Ampere", ("3090",)),
    Gpu("rtx-4060-ti-16gb", "NVIDIA GeForce RTX 4060 Ti 16GB", "nvidia", 16.0, True, "Ada"),
    Gpu("rtx-4070-ti-super", "NVIDIA GeForce RTX 4070 Ti SUPER", "nvidia", 16.0, True, "Ada"),
    Gpu("rtx-4080", "NVIDIA GeForce RTX 4080", "nvidia", 16.0, True, "Ada"),
    Gpu("rtx-4090", "NVIDIA GeForce RTX 4090", "nvidia", 24.0, True, "Ada", ("4090",)),
    Gpu("rtx-5090", "NVIDIA GeForce RTX 5090", "nvidia", 31.8, True, "Blackwell", ("5090",)),
    Gpu("rtx-a5000", "NVIDIA RTX A5000", "nvidia", 24.0, True, "Ampere", ("a5000",)),
    Gpu("rtx-a6000", "NVIDIA RTX A6000", "nvidia", 48.0, True, "Ampere", ("a6000",)),
    Gpu(
        "rtx-6000-ada",
        "NVIDIA RTX 6000 Ada",
        "nvidia",
        48.0,
        True,
        "Ada",
        ("rtx-6000-ada-generation",),
    ),
    Gpu("a10", "NVIDIA A10 24GB", "nvidia", 22.5, True, "Ampere"),
    Gpu("a10g", "NVIDIA A10G 24GB (AWS g5)", "nvidia", 22.5, True, "Ampere", ("aws-g5",)),
    Gpu("l4", "NVIDIA L4 24GB", "nvidia", 22.5, True, "Ada"),
    Gpu("a40", "NVIDIA A40 48GB", "nvidia", 45.0, True, "Ampere"),
    Gpu("l40s", "NVIDIA L40S 48GB", "nvidia", 45.0, True, "Ada", ("l40",)),
    Gpu(
        "a100-40gb",
        "NVIDIA A100 40GB",
        "nvidia",
        40.0,
        True,
        "Ampere",
        ("a100-sxm4-40gb", "a100-pcie-40gb"),
    ),
    Gpu(
        "a100-80gb",
        "NVIDIA A100 80GB",
        "nvidia",
        80.0,
        True,
        "Ampere",
        ("a100-sxm4-80gb", "a100-80gb-pcie", "a100-pcie-80gb"),
    ),
    Gpu(
        "h100-80gb",
        "NVIDIA H100 80GB (SXM/PCIe)",
        "nvidia",
        79.6,
        True,
        "Hopper",
        ("h100", "h100-80gb-hbm3", "h100-sxm5-80gb", "h100-pcie", "h100-sxm"),
    ),
    Gpu("h100-nvl", "NVIDIA H100 NVL 94GB", "nvidia", 93.0, True, "Hopper"),
    Gpu("gh200", "NVIDIA GH200 96GB", "nvidia", 95.0, True, "Hopper"),
    Gpu("h200", "NVIDIA H200 141GB", "nvidia", 139.8, True, "Hopper"),
    Gpu("b200", "NVIDIA B200 180GB", "nvidia", 178.4, True, "Blackwell"),
    Gpu("mi210", "AMD Instinct MI210 64GB", "amd", 64.0, True, "CDNA2"),
    Gpu("mi250x", "AMD Instinct MI250X (one GCD, 64GB)", "amd", 64.0, True, "CDNA2"),
    Gpu("mi300x", "AMD Instinct MI300X 192GB", "amd", 191.5, True, "CDNA3"),
)

_BY_KEY: dict[str, Gpu] = {}
for _gpu in GPUS:
    for _key in (_gpu.id, _gpu.name, *_gpu.aliases):
        _BY_KEY.setdefault(normalize(_key), _gpu)
# Vendor prefixes people type: "NVIDIA GeForce RTX 4090", "nvidia-a100-80gb".
_PREFIXES = ("nvidia", "geforce", "tesla", "amd", "instinct", "rtx")


def find_gpu(name: str, field: str = "hardware.gpu") -> Gpu:
    """Look a card up by id, name or alias, forgiving case, spaces and punctuation."""
    key = normalize(name)
    if key in _BY_KEY:
        return _BY_KEY[key]
    stripped = key
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if stripped.startswith(prefix) and len(stripped) > len(prefix):
                stripped = stripped[len(prefix) :]
                changed = True
    for candidate in (stripped, "rtx" + stripped):
        if candidate in _BY_KEY:
            return _BY_KEY[candidate]
    suggestions = closest(name, [g.id for g in GPUS])
    raise UnknownName(
        [
            Problem(
                field,
                f"unknown GPU {name!r}; closest catalog ids: {suggestions}. "
                "Use one of those, or give hardware.gpu_memory_gib instead "
                "(see GET /v1/catalog/gpus)",
                name,
            )
        ]
    )
