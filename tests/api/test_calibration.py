"""GET /v1/calibration on a real store, and placement taking a card's own margin once the
card has enough measured jobs. The jobs are stored as a worker on a CUDA card leaves them
(tests.utils.builders.add_measured_job): no GPU runs the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from advisor.memory import PUBLISHED_MARGIN
from loracle import placement
from loracle.calibration import MIN_JOBS
from loracle.store.db import session
from tests.api.test_placement import _submit
from tests.utils.api import client_for, register_worker, settings_for
from tests.utils.builders import add_measured_job
from tests.utils.hub import hub_that_has

MODEL = "meta-llama/Llama-2-7b-hf"
CARD, CARD_GIB = "NVIDIA A100-SXM4-80GB", 79.25
KLASS = placement.card_class(CARD, CARD_GIB, "cuda")


@pytest.fixture(autouse=True)
def _hub(monkeypatch):
    with hub_that_has(monkeypatch, MODEL):
        yield


@pytest.fixture
def settings(tmp_path: Path):
    return settings_for(tmp_path / "data")


def _measured(settings, reserved: list[float], estimate: float = 20.0, **extra) -> None:
    with session(settings.resolved_database_url) as s:
        for r in reserved:
            add_measured_job(s, CARD, CARD_GIB, estimate, r, **extra)


def _register_card(settings) -> None:
    card = {
        "index": "0",
        "name": CARD,
        "total_gib": CARD_GIB,
        "free_gib": CARD_GIB,
        "compute_capability": "8.0",
        "bf16": True,
    }
    register_worker(
        settings,
        worker_id="gpu-host:1",
        card_class=KLASS,
        cards=[card],
        device="cuda",
        queues=placement.queues_of(KLASS, 1, 1),
    )


def test_calibration_needs_a_key_and_starts_empty(settings):
    with client_for(settings, key=None) as c:
        assert c.get("/v1/calibration").status_code == 401
    with client_for(settings) as c:
        body = c.get("/v1/calibration").json()
    assert (body["jobs"], body["cards"], body["data"]) == (0, [], [])
    assert body["published_margin"] == PUBLISHED_MARGIN.fraction


def test_calibration_reports_errors_per_group_and_the_margin_a_card_earned(settings):
    _measured(settings, [20.0] * (MIN_JOBS - 2) + [21.0, 22.2])
    _measured(settings, [15.0, 18.0], variant="qlora", combine_with=("dora",))
    with client_for(settings) as c:
        body = c.get("/v1/calibration").json()
    assert body["jobs"] == MIN_JOBS + 2
    lora, combo = body["data"]
    assert (lora["card_class"], lora["variant"], lora["jobs"]) == (KLASS, "LoRA", MIN_JOBS)
    assert lora["median_error"] == 0.0 and lora["worst_error"] == round(20 / 22.2 - 1, 4)
    assert (combo["variant"], combo["jobs"]) == ("QLoRA + DoRA", 2)
    assert combo["median_error"] == round(((20 / 15 - 1) + (20 / 18 - 1)) / 2, 4)
    assert combo["worst_error"] == round(20 / 15 - 1, 4)  # over-estimated by a third
    (card,) = body["cards"]
    # All MIN_JOBS + 2 jobs on the card count; the worst reserved 11% above its estimate.
    assert card["measured"] and card["jobs"] == MIN_JOBS + 2 and card["margin"] == 0.11
    assert card["margin_source"] == f"{MIN_JOBS + 2} measured jobs on {CARD}"


def test_placement_uses_a_cards_own_margin_once_it_has_enough_jobs(settings):
    _register_card(settings)
    with client_for(settings) as c:
        before = _submit(c)
        assert before.status_code == 201, before.text
        assert before.json()["placement"]["margin"] == PUBLISHED_MARGIN.fraction
        _measured(settings, [20.0] * (MIN_JOBS - 1) + [21.0])
        after = _submit(c)
    assert after.status_code == 201, after.text
    placed = after.json()["placement"]
    assert placed["card_class"] == KLASS
    assert (
        placed["margin"] == 0.05
        and placed["margin_source"] == f"{MIN_JOBS} measured jobs on {CARD}"
    )
