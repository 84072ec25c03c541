"""The stored calibration grid must be what the tracer measures today.

Retracing all of `tests/advisor/data/trace_grid.json` takes tens of minutes, so every run
retraces a sample: one configuration of each variant (fixed, so a failure reproduces) and
two more drawn from the whole grid (seeded by `LORACLE_GRID_SEED`, else by the day, so the
sample walks the grid over time; the seed is in the test id). A trace is deterministic, so
the figures must match to the byte; when a library upgrade or a tracer change moves them,
regenerate the grid (`python -m worker.memtrace.grid run --out ...`) and review the change.
"""

from __future__ import annotations

import datetime
import json
import os
import random
from pathlib import Path

import pytest

from worker.memtrace import grid
from worker.memtrace.runner import TRACER_VERSION, library_versions

GRID_FILE = Path(__file__).parents[1] / "advisor" / "data" / "trace_grid.json"
DOCUMENT = json.loads(GRID_FILE.read_text(encoding="utf-8"))
ROWS = {r["id"]: r for r in DOCUMENT["rows"]}

# One per variant, chosen among the quicker rows (about 2-5 s each on 2 cores).
FIXED = [
    "Llama-3.2-1B-lora-s512-b4-nockpt",
    "Llama-3.2-1B-qlora-s512-b1-nockpt",
    "Llama-3.2-1B-dora-s512-b1-ckpt",
    "TinyLlama-1.1B-intermediate-step-1431k-3T-loraplus-s512-b4-ckpt",
]
SEED = int(os.environ.get("LORACLE_GRID_SEED", datetime.date.today().toordinal()))
DRAWN = random.Random(SEED).sample(sorted(set(ROWS) - set(FIXED)), 2)


def _release(version: str) -> str:
    """A version without its local build tag: 2.13.0+cpu and 2.13.0+cu128 run the same
    meta kernels."""
    return version.split("+")[0]


def test_grid_was_traced_with_these_libraries_and_this_tracer():
    assert DOCUMENT["tracer_version"] == TRACER_VERSION, "tracer changed: regenerate the grid"
    stored = {k: _release(v) for k, v in DOCUMENT["versions"].items()}
    installed = {k: _release(v) for k, v in library_versions().items()}
    assert stored == installed, "libraries changed: regenerate the grid"


@pytest.mark.parametrize("row_id", FIXED + DRAWN, ids=[*FIXED, *(f"seed{SEED}-{d}" for d in DRAWN)])
def test_stored_trace_matches_a_fresh_trace(row_id):
    stored = ROWS[row_id]
    fresh = grid.trace_row({k: stored[k] for k in ("model", "variant", "combine_with", "training")})
    assert fresh["peak_bytes"] == stored["peak_bytes"]
    assert fresh["by_kind_bytes"] == stored["by_kind_bytes"]
    assert fresh["peak_phase"] == stored["peak_phase"]
