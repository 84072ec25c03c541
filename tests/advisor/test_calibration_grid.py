"""The analytic memory model against the tracer, over the calibration grid.

`data/trace_grid.json` holds the traced peak (CUDA target, meta device) of every grid
configuration, written by `python -m memtrace.grid run`. These tests need no torch:
they hold the closed form within 10% of every traced configuration and keep the published
error table in docs/memory.md true. `tests/worker/test_memtrace_grid.py` retraces a sample of
the grid on every run, so the stored figures cannot drift from what the tracer measures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advisor.variants import CALIBRATED_VARIANTS
from memtrace import grid

GRID_FILE = Path(__file__).parent / "data" / "trace_grid.json"
DOCS = Path(__file__).parents[2] / "docs" / "memory.md"
TOLERANCE = 0.10

DOCUMENT = json.loads(GRID_FILE.read_text(encoding="utf-8"))
ROWS = DOCUMENT["rows"]


def test_the_grid_is_the_grid_the_issue_asks_for():
    assert len(ROWS) >= 200
    assert len({r["model"] for r in ROWS}) >= 6
    assert {r["variant"] for r in ROWS} == set(CALIBRATED_VARIANTS)
    assert len({r["training"]["seq_len"] for r in ROWS}) >= 2
    assert len({r["training"]["micro_batch_size"] for r in ROWS}) >= 2
    assert {r["training"]["gradient_checkpointing"] for r in ROWS} == {True, False}
    assert [r["id"] for r in ROWS] == [grid.row_id(c) for c in grid.configurations()]
    # Every row's breakdown adds up to its peak.
    for r in ROWS:
        assert sum(r["by_kind_bytes"].values()) == r["peak_bytes"], r["id"]


@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_analytic_model_is_within_10_percent_of_the_trace(row):
    analytic = grid.analytic_bytes(row)
    error = analytic / row["peak_bytes"] - 1
    assert abs(error) <= TOLERANCE, (
        f"{row['id']}: analytic {analytic / 2**30:.3f} GiB, traced "
        f"{row['peak_bytes'] / 2**30:.3f} GiB ({error:+.1%})"
    )


def test_published_error_table_is_the_grids():
    """docs/memory.md publishes the table this grid and the current analytic model give."""
    assert grid.table(ROWS) in DOCS.read_text(encoding="utf-8")
