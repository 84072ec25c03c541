"""GET /v1/catalog/gpus and GET /v1/catalog/models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from advisor.catalog.gpus import GPUS
from advisor.catalog.models import models

router = APIRouter(prefix="/v1/catalog", tags=["catalog"])


class GpuOut(BaseModel):
    id: str
    name: str
    vendor: str
    memory_gib: float
    bf16: bool
    architecture: str
    aliases: list[str]


class CatalogModelOut(BaseModel):
    id: str
    model_type: str
    total_params: int
    block_linear_params: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool


class GpuList(BaseModel):
    data: list[GpuOut]


class ModelList(BaseModel):
    data: list[CatalogModelOut]


@router.get("/gpus", response_model=GpuList)
def list_gpus() -> Any:
    return {"data": [g.as_dict() for g in GPUS]}


@router.get("/models", response_model=ModelList)
def list_models() -> Any:
    out = []
    for m in models():
        s = m.architecture.summary()
        out.append({"id": m.id, **{k: s[k] for k in CatalogModelOut.model_fields if k in s}})
    return {"data": out}
