"""Dependencies of the routes, as ``Annotated`` aliases. Tests swap them with
``app.dependency_overrides`` (e.g. ``get_settings``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends
from sqlalchemy.orm import Session

from loracle.queue import celery_for
from loracle.settings import Settings, get_settings
from loracle.store.db import session

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    with session(settings.resolved_database_url) as s:
        yield s


def get_queue(settings: SettingsDep) -> Celery:
    return celery_for(settings.model_dump_json())


def get_owner() -> str | None:
    """The API key's owner id; None while authentication is not configured."""
    return None


DbDep = Annotated[Session, Depends(get_db)]
QueueDep = Annotated[Celery, Depends(get_queue)]
OwnerDep = Annotated[str | None, Depends(get_owner)]
