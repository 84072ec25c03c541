"""Dependencies of the routes, as ``Annotated`` aliases. Tests swap them with
``app.dependency_overrides`` (e.g. ``get_settings``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends
from sqlalchemy.orm import Session

from api.security import OwnerDep, get_owner
from loracle.queue import celery_for
from loracle.settings import Settings, get_settings
from loracle.store.db import session

__all__ = ["DbDep", "OwnerDep", "QueueDep", "SettingsDep", "get_db", "get_owner", "get_queue"]

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    with session(settings.resolved_database_url) as s:
        yield s


def get_queue(settings: SettingsDep) -> Celery:
    return celery_for(settings.model_dump_json())


DbDep = Annotated[Session, Depends(get_db)]
QueueDep = Annotated[Celery, Depends(get_queue)]
