"""Model catalog: architecture figures of popular open models, by hub id.

The figures live in ``advisor/data/models.csv`` (from each model's
``config.json``); each entry becomes an HF-style config mapping, so catalog
models and user-supplied configs go through the same reader.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from typing import Any

from advisor.architecture import Architecture, from_hf_config
from advisor.catalog._match import closest, normalize
from advisor.errors import Problem, UnknownName

_INT_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
)
# Logit soft-capping of Gemma-2 (config.json): tanh over the fp32 logits adds
# logits-sized tensors to a step.
_FAMILY_EXTRAS: dict[str, dict[str, Any]] = {
    "gemma2": {"final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0},
}


@dataclass(frozen=True)
class CatalogModel:
    id: str
    config: dict[str, Any]
    published_total_params: int | None
    published_block_linear_params: int | None

    @cached_property
    def architecture(self) -> Architecture:
        return from_hf_config(self.config, where=f"model.name[{self.id}]")


@cache
def models() -> tuple[CatalogModel, ...]:
    text = resources.files("advisor").joinpath("data/models.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    out = []
    for row in rows:
        cfg: dict[str, Any] = {"model_type": row["model_type"]}
        for key in _INT_FIELDS:
            if row[key]:
                cfg[key] = int(row[key])
        cfg["tie_word_embeddings"] = row["tie_word_embeddings"] == "true"
        cfg.update(_FAMILY_EXTRAS.get(row["model_type"], {}))
        out.append(
            CatalogModel(
                id=row["model"],
                config=cfg,
                published_total_params=int(row["total_params"]) if row["total_params"] else None,
                published_block_linear_params=(
                    int(row["block_linear_params"]) if row["block_linear_params"] else None
                ),
            )
        )
    return tuple(out)


@cache
def _index() -> dict[str, CatalogModel]:
    index: dict[str, CatalogModel] = {}
    for m in models():
        index.setdefault(normalize(m.id), m)
        index.setdefault(normalize(m.id.split("/", 1)[1]), m)  # without the org prefix
    return index


def find_model(name: str, field: str = "model.name") -> CatalogModel:
    hit = _index().get(normalize(name))
    if hit is not None:
        return hit
    suggestions = closest(name, [m.id for m in models()])
    raise UnknownName(
        [
            Problem(
                field,
                f"unknown model {name!r}; closest catalog names: {suggestions}. Use one of "
                "those, or send the model's config.json as model.config "
                "(see GET /v1/catalog/models)",
                name,
            )
        ]
    )
