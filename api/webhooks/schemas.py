"""Request and response shapes of /v1/webhooks."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from api.jobs.schemas import STRICT
from loracle.store.webhooks import JOB_EVENTS

EventType = Literal[
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "fine_tuning.job.paused",
]
assert set(EventType.__args__) == set(JOB_EVENTS.values())  # type: ignore[attr-defined]


class WebhookCreate(BaseModel):
    model_config = STRICT

    url: str = Field(min_length=8, max_length=2048, description="http(s) URL to POST to.")
    events: list[EventType] = Field(
        default_factory=list, description="Event types to send; empty: all of them."
    )

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
            raise ValueError("must be an http:// or https:// URL without spaces")
        return url


class WebhookOut(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str]
    created_at: int
    secret: str | None = Field(
        description="The signing secret (Standard Webhooks, 'whsec_...'): shown once, when the "
        "endpoint is created."
    )


class WebhookList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookOut]


class DeliveryOut(BaseModel):
    id: str = Field(description="The webhook-id header, the same on every try.")
    type: str
    created_at: int
    attempts: int
    delivered: bool
    gave_up: bool
    last_error: str | None


class DeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DeliveryOut]


class WebhookDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    deleted: Literal[True] = True
