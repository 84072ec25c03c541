"""POST /v1/fine_tuning/jobs/{id}/try and GET .../tries/{try_id}: the API checks the job, the
prompts and the key's limit, stores the try and sends it to the job's class's inference queue;
a worker generates (worker.tryout.execute_try, called here in-process as the task would, or on
a thread to stand in for a worker that answers within the wait). The adapter is trained for
real on the tiny model."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from api.deps import get_queue
from api.security import key_owner
from loracle import jobfiles
from loracle.plan import load_plan
from loracle.queue import TRY_JOB
from loracle.store import jobs as store
from loracle.store import tries
from loracle.store.db import session
from tests.utils.api import (
    KEY_A,
    KEY_B,
    add_job_with_status,
    client_for,
    error_code,
    settings_for,
)
from tests.utils.builders import plan_dict
from worker.training import run_training
from worker.tryout import execute_try

JOB_QUEUE = "loracle.cpu-test.x1"
INFERENCE_QUEUE = "loracle.infer.cpu-test"
LONG = " ".join(["alpha"] * 600)  # over the tiny model's 512-token context


class RecordingQueue:
    """Stands in for Celery: keeps what the API sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], str]] = []

    def send_task(self, name: str, args: list[Any], queue: str) -> None:
        self.sent.append((name, args, queue))


class AnsweringQueue:
    """A worker that takes each try as it is sent, on a thread, as the inference consumer
    would."""

    def __init__(self, settings) -> None:
        self.settings = settings

    def send_task(self, name: str, args: list[Any], queue: str) -> None:
        threading.Thread(target=execute_try, args=(args[0], self.settings)).start()


class DownBroker:
    def send_task(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")


@pytest.fixture(scope="module")
def settings(tmp_path_factory, model_root):
    return settings_for(
        tmp_path_factory.mktemp("try-api"),
        model_roots=str(model_root),
        try_wait_s=0,
        try_max_in_flight=100,
    )


@pytest.fixture(scope="module")
def queue():
    return RecordingQueue()


def client(settings, key: str, queue) -> Any:
    c = client_for(settings, key)
    c.app.dependency_overrides[get_queue] = lambda: queue  # type: ignore[attr-defined]
    return c


@pytest.fixture(scope="module")
def clients(settings, queue):
    with client(settings, KEY_A, queue) as a, client(settings, KEY_B, queue) as b:
        yield a, b


def add_job(settings, status: str, key: str = KEY_A) -> str:
    """A job of `key`'s on the tiny model in the store, with the given status."""
    return add_job_with_status(settings, status, JOB_QUEUE, key=key)


@pytest.fixture(scope="module")
def succeeded(settings, tiny_model, train_file):
    """A succeeded LoRA job whose adapter lies where a worker leaves it."""
    job_id = add_job(settings, store.SUCCEEDED)
    plan = load_plan(
        plan_dict(tiny_model, train_file, jobfiles.job_dir(settings.data_dir, job_id), max_steps=30)
    )
    assert run_training(plan).status == "succeeded"
    return job_id


def clear_in_flight(settings) -> None:
    """Every unfinished try timed out: a clean slate for a test of the limit."""
    with session(settings.resolved_database_url) as s:
        tries.expire(s, 0)


def test_a_try_is_sent_to_the_inference_queue_and_a_worker_answers_it(
    clients, settings, succeeded, queue
):
    a, _ = clients
    body = {"prompts": ["alpha bravo charlie", "echo foxtrot"], "max_new_tokens": 6}
    answer = a.post(f"/v1/fine_tuning/jobs/{succeeded}/try", json=body)
    assert answer.status_code == 202, answer.text
    queued = answer.json()
    assert queued["status"] == "queued" and queued["completions"] == []
    assert queued["temperature"] == 0.0 and queued["seed"] == 0 and queued["max_new_tokens"] == 6
    assert queued["url"] == f"/v1/fine_tuning/jobs/{succeeded}/tries/{queued['id']}"
    # The class's inference queue, never a training queue; nothing generated in the API.
    assert queue.sent[-1] == (TRY_JOB, [queued["id"]], INFERENCE_QUEUE)

    assert execute_try(queued["id"], settings) == "succeeded"
    assert execute_try(queued["id"], settings) == "skipped"  # a second delivery
    done = a.get(queued["url"]).json()
    assert done["status"] == "succeeded", done
    assert [c["prompt"] for c in done["completions"]] == body["prompts"]
    first = done["completions"][0]
    assert first["adapter"].split()[:2] == ["delta", "echo"], first
    assert first["base"] != first["adapter"]
    assert done["device"] == "cpu" and done["base_weights"] == "original"
    assert done["load_seconds"] > 0 and done["generate_seconds"] > 0
    assert done["finished_at"] >= done["created_at"]
    # The alias answers the same.
    assert a.get(f"/v1/jobs/{succeeded}/tries/{queued['id']}").json() == done


def test_a_try_answered_within_the_wait_is_a_200(settings, succeeded):
    waiting = settings.model_copy(update={"try_wait_s": 30.0})
    with client(waiting, KEY_A, AnsweringQueue(settings)) as a:
        started = time.monotonic()
        answer = a.post(
            f"/v1/fine_tuning/jobs/{succeeded}/try",
            json={"prompts": ["alpha"], "max_new_tokens": 4, "temperature": 0.8, "seed": 5},
        )
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - started < 30
        done = answer.json()
        assert done["status"] == "succeeded" and len(done["completions"]) == 1
        again = a.post(
            f"/v1/fine_tuning/jobs/{succeeded}/try",
            json={"prompts": ["alpha"], "max_new_tokens": 4, "temperature": 0.8, "seed": 5},
        ).json()
        assert again["completions"] == done["completions"], "the seed reproduces sampling"


def test_another_keys_job_and_try_are_not_found(clients, settings, succeeded):
    a, b = clients
    answer = b.post(f"/v1/fine_tuning/jobs/{succeeded}/try", json={"prompts": ["alpha"]})
    assert answer.status_code == 404 and error_code(answer.json()) == "not_found"
    mine = a.post(f"/v1/fine_tuning/jobs/{succeeded}/try", json={"prompts": ["alpha"]}).json()
    assert b.get(f"/v1/fine_tuning/jobs/{succeeded}/tries/{mine['id']}").status_code == 404
    assert a.get(f"/v1/fine_tuning/jobs/{succeeded}/tries/try-nope").status_code == 404
    other = add_job(settings, store.SUCCEEDED)
    assert a.get(f"/v1/fine_tuning/jobs/{other}/tries/{mine['id']}").status_code == 404


@pytest.mark.parametrize("status", [store.QUEUED, store.RUNNING, store.FAILED, store.CANCELLED])
def test_only_a_succeeded_job_is_tried(clients, settings, status):
    a, _ = clients
    job_id = add_job(settings, status)
    answer = a.post(f"/v1/fine_tuning/jobs/{job_id}/try", json={"prompts": ["alpha"]})
    assert answer.status_code == 409 and error_code(answer.json()) == "conflict"
    assert f"is {status}" in answer.json()["detail"]
    assert "only a succeeded job" in answer.json()["detail"]


def test_a_prompt_longer_than_the_context_is_a_422_naming_the_limit(clients, succeeded, queue):
    a, _ = clients
    sent = len(queue.sent)
    answer = a.post(
        f"/v1/fine_tuning/jobs/{succeeded}/try",
        json={"prompts": ["alpha", LONG], "max_new_tokens": 12},
    )
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert error_code(body) == "prompt_too_long"
    assert "at most 500 tokens" in body["detail"] and "context is 512" in body["detail"]
    assert [p["field"] for p in body["problems"]] == ["prompts.1"]
    assert body["error"]["param"] == "prompts.1"
    # max_new_tokens alone can leave no room.
    answer = a.post(
        f"/v1/fine_tuning/jobs/{succeeded}/try", json={"prompts": ["alpha"], "max_new_tokens": 512}
    )
    assert answer.status_code == 422 and error_code(answer.json()) == "prompt_too_long"
    assert answer.json()["problems"][0]["field"] == "max_new_tokens"
    assert "at most 511" in answer.json()["detail"]
    assert len(queue.sent) == sent, "nothing sent"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompts"),
        ({"prompts": []}, "prompts"),
        ({"prompts": ["a"] * 9}, "prompts"),
        ({"prompts": "alpha"}, "prompts"),
        ({"prompts": [3]}, "prompts.0"),
        ({"prompts": ["a"], "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompts": ["a"], "max_new_tokens": 513}, "max_new_tokens"),
        ({"prompts": ["a"], "temperature": -0.1}, "temperature"),
        ({"prompts": ["a"], "temperature": 2.5}, "temperature"),
        ({"prompts": ["a"], "seed": -1}, "seed"),
        ({"prompts": ["a"], "seed": "7"}, "seed"),
        ({"prompts": ["a"], "top_p": 0.9}, "top_p"),
    ],
)
def test_each_bad_field_is_a_422_that_names_it(clients, succeeded, body, field):
    a, _ = clients
    answer = a.post(f"/v1/fine_tuning/jobs/{succeeded}/try", json=body)
    assert answer.status_code == 422, answer.text
    assert [p["field"] for p in answer.json()["problems"]] == [field], answer.json()


def test_the_limit_of_tries_in_flight_is_per_key_with_retry_after(settings, succeeded, queue):
    clear_in_flight(settings)
    limited = settings.model_copy(update={"try_max_in_flight": 2})
    theirs = add_job(settings, store.SUCCEEDED, key=KEY_B)
    with client(limited, KEY_A, queue) as a, client(limited, KEY_B, queue) as b:
        url = f"/v1/fine_tuning/jobs/{succeeded}/try"
        first = a.post(url, json={"prompts": ["alpha"]})
        assert first.status_code == 202
        assert a.post(url, json={"prompts": ["bravo"]}).status_code == 202
        third = a.post(url, json={"prompts": ["charlie"]})
        assert third.status_code == 429, third.text
        assert error_code(third.json()) == "rate_limited"
        assert "limit is 2" in third.json()["detail"]
        assert "LORACLE_TRY_MAX_IN_FLIGHT" in third.json()["detail"]
        assert 1 <= int(third.headers["Retry-After"]) <= 5
        # Another key has its own limit.
        assert (
            b.post(f"/v1/fine_tuning/jobs/{theirs}/try", json={"prompts": ["a"]}).status_code == 202
        )
        # A finished try frees its place.
        assert execute_try(first.json()["id"], settings) == "succeeded"
        assert a.post(url, json={"prompts": ["delta"]}).status_code == 202


def test_a_try_unfinished_past_the_timeout_fails_and_frees_its_place(settings, succeeded, queue):
    clear_in_flight(settings)
    short = settings.model_copy(update={"try_timeout_s": 0.5, "try_max_in_flight": 1})
    with client(short, KEY_A, queue) as a:
        url = f"/v1/fine_tuning/jobs/{succeeded}/try"
        asked = a.post(url, json={"prompts": ["alpha"]}).json()
        assert a.post(url, json={"prompts": ["alpha"]}).status_code == 429
        time.sleep(0.7)
        late = a.get(asked["url"]).json()
        assert late["status"] == "failed" and late["error"]["code"] == "try_timeout", late
        assert "LORACLE_TRY_TIMEOUT_S" in late["error"]["message"]
        assert execute_try(asked["id"], short) == "skipped", "a worker that takes it late skips it"
        assert a.post(url, json={"prompts": ["alpha"]}).status_code == 202


def test_a_try_the_broker_cannot_take_is_a_503_and_a_failed_try(settings, succeeded):
    clear_in_flight(settings)
    with client(settings, KEY_A, DownBroker()) as a:
        answer = a.post(f"/v1/fine_tuning/jobs/{succeeded}/try", json={"prompts": ["alpha"]})
        assert answer.status_code == 503 and error_code(answer.json()) == "broker_unavailable"
    with session(settings.resolved_database_url) as s:
        owner = key_owner(f"Bearer {KEY_A}", settings)
        assert tries.in_flight(s, owner) == [], "a try never sent does not count"


def test_a_worker_without_the_api_data_dir_refuses_the_try(clients, settings, succeeded):
    a, _ = clients
    asked = a.post(f"/v1/fine_tuning/jobs/{succeeded}/try", json={"prompts": ["alpha"]}).json()
    remote = settings.model_copy(update={"api_url": "http://api.invalid:8000"})
    assert execute_try(asked["id"], remote) == "failed"
    done = a.get(asked["url"]).json()
    assert done["status"] == "failed"
    assert done["error"]["code"] == "remote_worker_unsupported", done
    assert "LORACLE_API_URL" in done["error"]["message"]


def test_a_worker_checks_the_prompt_length_too(clients, settings, succeeded):
    """A try the API could not measure (no tokenizer.json on its host) fails on the worker
    with the same limit."""
    with session(settings.resolved_database_url) as s:
        row = tries.add_try(
            s,
            succeeded,
            key_owner(f"Bearer {KEY_A}", settings),
            {"prompts": [LONG], "max_new_tokens": 12, "temperature": 0.0, "seed": 0},
        )
        try_id = row.id
    assert execute_try(try_id, settings) == "failed"
    done = clients[0].get(f"/v1/fine_tuning/jobs/{succeeded}/tries/{try_id}").json()
    assert done["error"]["code"] == "prompt_too_long" and "at most 500" in done["error"]["message"]
