"""Placement at submission: a job goes to the smallest registered card class that holds it,
is refused with the largest card and the remedies when none does (or waits, if asked), and a
waiting job is placed by the dispatcher once a fitting worker registers. In-process API on a
real store; the workers are registered in the store as `loracle worker --memory-gib` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from advisor.catalog.models import find_model
from advisor.memory import estimate
from advisor.profile import TrainingSettings
from advisor.variants import combination
from loracle import dispatch, placement
from loracle.queue import make_celery, waiting_job_ids
from tests.utils.api import client_for, register_worker, settings_for
from tests.utils.builders import jsonl_bytes
from tests.utils.hub import hub_that_has

MODEL = "meta-llama/Llama-2-7b-hf"
SETTINGS = {"seq_len": 512, "max_steps": 10}


@pytest.fixture(autouse=True)
def _hub(monkeypatch):
    with hub_that_has(monkeypatch, MODEL):
        yield


@pytest.fixture
def settings(tmp_path: Path):
    return settings_for(tmp_path / "data")


def _needs_gib(gpus: int = 1) -> float:
    """What the advisor says a 7B LoRA job of SETTINGS needs per card (plan defaults)."""
    arch = find_model(MODEL).architecture
    training = TrainingSettings(seq_len=512, gradient_checkpointing=False)
    return estimate(arch, training, combination("lora"), gpu_count=gpus).total_gib


def _submit(client, **extra):
    upload = client.post(
        "/v1/files",
        files={"file": ("t.jsonl", jsonl_bytes({"text": "hello"}))},
        data={"purpose": "fine-tune"},
    )
    assert upload.status_code == 201, upload.text
    body = {
        "model": MODEL,
        "training_file": upload.json()["id"],
        "variant": "lora",
        "hyperparameters": SETTINGS,
        **extra,
    }
    return client.post("/v1/jobs", json=body)


def test_the_smallest_class_that_holds_the_job_gets_it(settings):
    needs = _needs_gib()
    register_worker(settings, memory_gib=needs / 2, worker_id="small:1")
    fits = register_worker(settings, memory_gib=needs * 1.5, worker_id="mid:1")
    register_worker(settings, memory_gib=needs * 4, worker_id="big:1")
    with client_for(settings) as c:
        r = _submit(c)
    assert r.status_code == 201, r.text
    job = r.json()
    where = job["placement"]
    assert where["queue"] == fits and not where["waiting"]
    assert where["estimate_gib"] == pytest.approx(needs, abs=1e-3)
    assert where["card_gib"] == pytest.approx(needs * 1.5)
    # what the card has beyond the total and the fit margin the estimate states
    assert where["margin_gib"] == pytest.approx(
        needs * 1.5 - needs * (1 + where["margin"]), abs=2e-3
    )
    assert where["margin"] > 0 and where["margin_source"]
    assert "smallest card class that holds it" in where["reason"]
    assert job["resources"] == {"gpus": 1}
    assert waiting_job_ids(settings) == {job["id"]}  # sent to that class's queue


def test_no_class_holds_it_is_a_422_naming_the_largest_card_and_remedies(settings):
    needs = _needs_gib()
    register_worker(settings, memory_gib=round(needs * 0.8, 1), worker_id="small:1")
    with client_for(settings) as c:
        r = _submit(c)
    assert r.status_code == 422
    (problem,) = r.json()["problems"]
    assert problem["field"] == "placement"
    assert f"{needs:.1f} GiB per card" in problem["message"]
    assert f"{round(needs * 0.8, 1):g} GiB" in problem["message"]
    assert "try: " in problem["message"]  # the advisor's remedies for that card
    assert '"placement": "wait"' in problem["message"]


def test_a_card_count_remedy_is_the_resources_request(settings):
    """A single 7B job too large for one card of the class, with two-card workers: the
    remedy names resources.gpus, and asking for it places the job, with FSDP: DDP holds
    the whole run on each card, so only sharding makes two cards hold what one cannot."""
    arch = find_model(MODEL).architecture
    training = TrainingSettings(seq_len=512, gradient_checkpointing=False)
    one = estimate(arch, training, combination("lora"), gpu_count=1).total_gib
    two = estimate(arch, training, combination("lora"), gpu_count=2, strategy="fsdp").total_gib
    card = (one + two) / 2  # too small for one card, enough for each of two
    cards = [
        {
            "index": str(i),
            "name": "cpu",
            "total_gib": card,
            "free_gib": card,
            "compute_capability": None,
            "bf16": True,
        }
        for i in range(2)
    ]
    klass = placement.card_class("cpu", card, "cpu")
    register_worker(
        settings,
        memory_gib=card,
        worker_id="pair:1",
        cards=cards,
        queues=placement.queues_of(klass, 2, 1),
    )
    with client_for(settings) as c:
        refused = _submit(c, hyperparameters={**SETTINGS, "gradient_checkpointing": False})
        assert refused.status_code == 422
        assert "use 2 cards (resources.gpus: 2)" in refused.json()["problems"][0]["message"]
        placed = _submit(
            c,
            hyperparameters={**SETTINGS, "gradient_checkpointing": False},
            resources={"gpus": 2},
        )
    assert placed.status_code == 201, placed.text
    assert placed.json()["placement"]["queue"] == placement.queue_for(klass, 2)
    assert placed.json()["placement"]["strategy"] == "fsdp"


@pytest.mark.parametrize("gpus", [0, -1])
def test_zero_or_negative_cards_is_a_422(settings, gpus):
    register_worker(settings)
    with client_for(settings) as c:
        r = _submit(c, resources={"gpus": gpus})
    assert r.status_code == 422
    assert r.json()["problems"][0]["field"] == "resources.gpus"


def test_more_cards_than_any_worker_has_is_a_422_with_its_count(settings):
    register_worker(settings, memory_gib=200)
    with client_for(settings) as c:
        r = _submit(c, resources={"gpus": 4})
    assert r.status_code == 422
    (problem,) = r.json()["problems"]
    assert problem["field"] == "resources.gpus"
    assert "the most any registered worker offers a job is 1" in problem["message"]


def test_wait_keeps_it_queued_until_a_fitting_worker_registers(settings):
    needs = _needs_gib()
    register_worker(settings, memory_gib=round(needs * 0.8, 1), worker_id="small:1")
    with client_for(settings) as c:
        r = _submit(c, placement="wait")
        assert r.status_code == 201, r.text
        job = r.json()
        assert job["status"] == "queued" and job["placement"]["waiting"]
        assert "largest registered card" in job["placement"]["reason"]
        queue = make_celery(settings)
        assert dispatch.dispatch_pending(settings, queue) == 0  # still nothing holds it
        assert waiting_job_ids(settings) == set()
        fits = register_worker(settings, memory_gib=needs * 2, worker_id="big:1")
        assert dispatch.dispatch_pending(settings, queue) == 1
        placed = c.get(f"/v1/jobs/{job['id']}").json()
        events = c.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert placed["placement"]["queue"] == fits and not placed["placement"]["waiting"]
    assert waiting_job_ids(settings) == {job["id"]}
    assert [e["type"] for e in events].count("placement") == 2  # waiting, then placed


def test_with_no_worker_registered_the_job_waits_for_one(settings):
    with client_for(settings) as c:
        r = _submit(c)
    assert r.status_code == 201
    assert r.json()["placement"]["waiting"]
    assert "no worker has registered yet" in r.json()["placement"]["reason"]


def test_workers_are_listed_and_drop_out_when_their_lease_runs_out(settings):
    from datetime import timedelta

    from sqlalchemy import update

    from loracle.store.db import session
    from loracle.store.models import WorkerRow, now

    register_worker(settings, memory_gib=24, worker_id="alive:1")
    register_worker(settings, memory_gib=48, worker_id="gone:1")
    with session(settings.resolved_database_url) as s:
        s.execute(
            update(WorkerRow)
            .where(WorkerRow.id == "gone:1")
            .values(expires_at=now() - timedelta(seconds=1))
        )
    with client_for(settings) as c:
        listed = c.get("/v1/workers").json()["data"]
    assert [w["id"] for w in listed] == ["alive:1"]
    (alive,) = listed
    assert alive["card_class"] == "cpu-24g" and alive["cards"][0]["total_gib"] == 24
    assert alive["queues"] == ["loracle.cpu-24g.x1"]


def test_a_training_queue_names_its_class_and_tries_go_to_the_class_inference_queue():
    from loracle.placement import class_of_queue, inference_queue, queue_for

    klass = "nvidia-h100-80gb-hbm3-79p6g"
    assert class_of_queue(queue_for(klass, 4)) == klass
    assert class_of_queue("loracle") is None and class_of_queue(None) is None
    assert inference_queue(klass) == f"loracle.infer.{klass}"
    # Not one of the class's training queues, which its training pool consumes.
    assert inference_queue(klass) not in [queue_for(klass, n) for n in range(1, 9)]
