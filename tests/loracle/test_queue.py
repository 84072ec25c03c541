"""The Celery settings that give loracle's queue guarantees (loracle/queue.py), the
task's signature (a job id and nothing else), and which broker each environment gets."""

from __future__ import annotations

import base64
import importlib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from celery import Celery

from loracle.queue import QUEUE, RUN_JOB, make_celery
from loracle.settings import Settings, get_settings


@pytest.fixture
def embedded(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", broker_url=None)


@pytest.fixture
def tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """worker.tasks builds its app from the environment at import: give it a data dir of
    its own (not ./data) and the embedded broker."""
    monkeypatch.setenv("LORACLE_DATA_DIR", str(tmp_path / "worker-data"))
    monkeypatch.delenv("LORACLE_BROKER_URL", raising=False)
    get_settings.cache_clear()
    try:
        yield importlib.import_module("worker.tasks")
    finally:
        get_settings.cache_clear()


def test_json_only_late_acks_one_job_at_a_time(embedded: Settings) -> None:
    conf = make_celery(embedded).conf
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_reject_on_worker_lost is False
    assert conf.task_default_queue == QUEUE
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False
    assert conf.worker_max_tasks_per_child == 1


def test_the_task_takes_only_a_job_id(tasks: ModuleType) -> None:
    app: Celery = tasks.app
    task = app.tasks[RUN_JOB]
    params = inspect.signature(task.run).parameters
    assert list(params) == ["job_id"]
    assert params["job_id"].annotation in (str, "str")
    assert params["job_id"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert task.acks_late is True
    assert app.conf.accept_content == ["json"] and app.conf.worker_prefetch_multiplier == 1


def test_the_api_sends_a_json_message_holding_only_the_job_id(embedded: Settings) -> None:
    """To the queue of the card class the job was placed on."""
    from loracle.dispatch import enqueue
    from loracle.store import jobs as store
    from loracle.store.db import session
    from tests.utils.api import register_worker
    from tests.utils.builders import add_placeholder_file

    target = register_worker(embedded)
    with session(embedded.resolved_database_url) as s:
        row = store.add_job(
            s,
            id="job-0123456789abcdef01234567",
            owner=None,
            model="org/name",
            training_file=add_placeholder_file(s),
            variant="lora",
            requested_variant="lora",
            queue=target,
        )
    app = make_celery(embedded)
    assert enqueue(embedded, app, row.id) is True
    (message,) = (embedded.data_dir / "broker" / "queue").iterdir()
    assert message.name.endswith(f".{target}.msg")
    envelope = json.loads(message.read_text())
    assert envelope["content-type"] == "application/json"
    assert envelope["headers"]["task"] == RUN_JOB
    assert envelope["properties"]["delivery_info"]["routing_key"] == target
    args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
    assert args == ["job-0123456789abcdef01234567"] and kwargs == {}


def test_no_broker_url_is_the_filesystem_transport_under_the_data_dir(
    embedded: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # kombu's default control folder is ./control
    app = make_celery(embedded)
    assert app.conf.broker_url == "filesystem://"
    assert app.connection_for_write().transport.driver_type == "filesystem"
    broker = embedded.data_dir / "broker"
    options = app.conf.broker_transport_options
    assert options["data_folder_in"] == options["data_folder_out"] == str(broker / "queue")
    assert options["processed_folder"] == str(broker / "processed")
    assert options["control_folder"] == str(broker / "control")
    for name in ("queue", "processed", "control"):
        assert (broker / name).is_dir()
    app.send_task(RUN_JOB, args=["job-x"])
    assert len(list((broker / "queue").iterdir())) == 1
    assert not (tmp_path / "control").exists()


def test_a_broker_url_is_redis(tmp_path: Path) -> None:
    url = "redis://127.0.0.1:6379/7"
    settings = Settings(data_dir=tmp_path / "data", broker_url=url, broker_visibility_timeout_s=120)
    app = make_celery(settings)
    assert app.conf.broker_url == url
    assert app.connection_for_write().transport.driver_type == "redis"
    assert app.conf.broker_transport_options["visibility_timeout"] == 120
    assert not (tmp_path / "data" / "broker").exists()


@pytest.mark.parametrize(
    ("index", "visible", "card"),
    [(1, "3,5", "5"), (0, " 2 , 7", "2"), (2, "3,5", None), (0, "", None)],
)
def test_each_pool_process_gets_a_card_of_its_own(tasks, monkeypatch, index, visible, card) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert tasks.gpu_for_process(index, tasks.visible_cards()) == card


def test_a_worker_with_more_processes_than_cards_refuses_to_start(tasks, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")
    with pytest.raises(SystemExit, match="--concurrency 2 needs 2 cards, and 1 are visible"):
        tasks.main(concurrency=2)


def _pinned(queue) -> None:
    import os

    from celery.signals import worker_process_init

    worker_process_init.send(sender=None)  # what Celery sends in a new pool process
    queue.put(os.environ.get("CUDA_VISIBLE_DEVICES"))


def test_a_new_pool_process_sees_only_its_card(tasks, monkeypatch) -> None:
    """In a real billiard process with a pool index, as Celery's prefork pool makes them."""
    import billiard

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    context = billiard.get_context("fork")
    seen = context.Queue()
    process = context.Process(target=_pinned, args=(seen,))
    process.index = 1
    process.start()
    try:
        assert seen.get(timeout=30) == "5"
    finally:
        process.join(timeout=30)
