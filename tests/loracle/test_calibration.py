"""Calibration from the jobs' own measurements: what counts, the errors per group, and the
margin a card earns after MIN_JOBS jobs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from advisor.memory import GIB, PUBLISHED_MARGIN
from loracle import calibration
from loracle.calibration import MIN_JOBS, Observation


def _row(i: int, estimate: float, reserved: float, device: str = "cuda:0", **extra):
    measured = {
        "device": device,
        "device_name": "NVIDIA A10G",
        "device_total_bytes": int(22.06 * GIB),
        "reserved_bytes": int(reserved * GIB) if device != "cpu" else None,
        "rss_growth_bytes": int(reserved * GIB) if device == "cpu" else None,
    }
    return SimpleNamespace(
        id=f"job-{i}",
        model="m",
        variant=extra.get("variant", "lora"),
        combine_with=extra.get("combine_with", []),
        estimate={"total_gib": estimate, "architecture": "llama 32x4096"},
        measured_peak=measured,
    )


def test_only_cuda_runs_with_an_estimate_are_observations():
    rows = [
        _row(1, 10.0, 12.5),
        _row(2, 10.0, 9.0, device="cpu"),  # resident set growth: another quantity
        SimpleNamespace(**{**vars(_row(3, 10.0, 9.0)), "estimate": None}),
        SimpleNamespace(**{**vars(_row(4, 10.0, 9.0)), "measured_peak": None}),
    ]
    (only,) = calibration.observations(rows)
    assert only.job_id == "job-1" and only.card_class == "nvidia-a10g-22p1g"
    assert only.error == pytest.approx(10.0 / 12.5 - 1)  # under by 20%
    assert only.variant == "LoRA"


def test_groups_give_count_median_and_worst_error_per_card_architecture_and_variant():
    rows = [_row(i, 10.0, r) for i, r in enumerate((9.0, 10.0, 12.5))]
    rows.append(_row(9, 10.0, 8.0, variant="qlora", combine_with=["dora"]))
    lora, combo = calibration.groups(calibration.observations(rows))
    assert (lora.variant, lora.jobs) == ("LoRA", 3)
    assert lora.median_error == pytest.approx(0.0)
    assert lora.worst_error == pytest.approx(-0.2)  # 10 / 12.5 - 1, farther than +0.111
    assert (combo.variant, combo.jobs, combo.worst_error) == ("QLoRA + DoRA", 1, 0.25)


def test_a_card_keeps_the_published_margin_until_it_has_enough_jobs():
    few = calibration.observations([_row(i, 10.0, 10.5) for i in range(MIN_JOBS - 1)])
    (card,) = calibration.margins(few).values()
    assert (card.jobs, card.measured, card.margin) == (MIN_JOBS - 1, False, PUBLISHED_MARGIN)
    assert calibration.measured_margins(few) == {}


def test_with_enough_jobs_the_margin_is_the_one_every_job_would_have_fit_with():
    reserved = [10.0] * (MIN_JOBS - 1) + [11.23]  # the worst job reserved 12.3% above
    found = calibration.observations([_row(i, 10.0, r) for i, r in enumerate(reserved)])
    (card,) = calibration.margins(found).values()
    assert card.measured and card.jobs == MIN_JOBS
    assert card.margin.fraction == 0.13  # 12.3% rounded up to the next percent
    assert card.margin.source == f"{MIN_JOBS} measured jobs on NVIDIA A10G"
    for o in found:  # every one of them fits with it
        assert o.estimate_gib * (1 + card.margin.fraction) >= o.measured_gib
    assert calibration.measured_margins(found) == {"NVIDIA A10G": card.margin}
    assert card.card_class == "nvidia-a10g-22p1g"


def test_an_estimate_that_always_covered_the_run_still_keeps_a_floor():
    found = calibration.observations([_row(i, 10.0, 8.0) for i in range(MIN_JOBS)])
    assert calibration.margins(found)["NVIDIA A10G"].margin.fraction == 0.02


def test_the_worst_error_prefers_the_under_estimate_when_as_far():
    o = [
        Observation("a", "c", "c", 1, "x", "LoRA", 9.0, 10.0),
        Observation("b", "c", "c", 1, "x", "LoRA", 11.0, 10.0),
    ]
    assert calibration.groups(o)[0].worst_error == pytest.approx(-0.1)
