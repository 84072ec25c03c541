"""Dependencies of the routes, as ``Annotated`` aliases. Tests swap them with
``app.dependency_overrides`` or build the app with their own settings
(``create_app(settings)``).

Cheap dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in
its thread pool, a hand-off that cost more than the whole recommendation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends
from sqlalchemy.orm import Session

from api.security import OwnerDep, app_settings, get_owner
from loracle.queue import celery_for
from loracle.settings import Settings
from loracle.store.db import session

__all__ = [
    "DbDep",
    "OwnerDep",
    "QueueDep",
    "SettingsDep",
    "app_settings",
    "get_db",
    "get_owner",
    "get_queue",
]

SettingsDep = Annotated[Settings, Depends(app_settings)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    with session(settings.resolved_database_url) as s:
        yield s


async def get_queue(settings: SettingsDep) -> Celery:
    return celery_for(settings.model_dump_json())


DbDep = Annotated[Session, Depends(get_db)]
QueueDep = Annotated[Celery, Depends(get_queue)]
