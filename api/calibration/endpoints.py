"""GET /v1/calibration: the estimate against what jobs measured, per card x architecture x
variant, and the fit margin each card uses (loracle.calibration)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from advisor.memory import PUBLISHED_MARGIN
from api.calibration.schemas import Calibration
from api.deps import DbDep
from loracle import calibration
from loracle.store import jobs as store

router = APIRouter(prefix="/v1/calibration", tags=["fleet"])


@router.get("", response_model=Calibration, summary="Estimates against measured peaks")
def get_calibration(s: DbDep) -> Any:
    """Every succeeded job that ran on a CUDA card measured its whole run's reserved peak;
    here each card class x architecture x variant has its count, median error and worst
    error of the estimate's `total_gib` against it. A card with at least `jobs_needed`
    measured jobs gets its own fit margin (the smallest with which all of them would have
    fit, at least 2%); until then, the published one. Jobs on the CPU measure another
    quantity and are not counted. Fleet-wide: no job ids, no owners."""
    found = calibration.observations(store.measured_jobs(s))
    return Calibration(
        jobs=len(found),
        published_margin=PUBLISHED_MARGIN.fraction,
        published_margin_source=PUBLISHED_MARGIN.source,
        cards=[m.as_dict() for m in calibration.margins(found).values()],
        data=[g.as_dict() for g in calibration.groups(found)],
    )
