"""Response shape of /v1/calibration."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class CalibrationGroup(BaseModel):
    card_class: str = Field(description="The card class placement routes by.")
    card_name: str
    architecture: str = Field(description="The model's family and shape, or its id.")
    variant: str = Field(description="The variant and its combination, as titled.")
    jobs: int
    median_error: float = Field(
        description="Median of estimate / measured - 1 over the jobs (total_gib against "
        "torch.cuda.max_memory_reserved over the whole run); negative: under-estimated."
    )
    worst_error: float = Field(description="The error farthest from zero.")


class CardMarginOut(BaseModel):
    card_class: str
    card_name: str
    jobs: int
    jobs_needed: int = Field(description="Jobs a card needs before its margin is its own.")
    margin: float = Field(description="The fit margin placement uses on this card.")
    margin_source: str
    measured: bool = Field(description="True once the margin comes from the card's own jobs.")


class Calibration(BaseModel):
    object: Literal["calibration"] = "calibration"
    jobs: int = Field(description="Succeeded jobs measured on a CUDA card, of those read.")
    published_margin: float = Field(description="The margin of a card with too few jobs.")
    published_margin_source: str
    cards: list[CardMarginOut]
    data: list[CalibrationGroup]
