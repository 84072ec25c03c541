"""bench/gpu_memory_check.py without a GPU: its CPU side (configurations, both estimates)
must run, so the script is ready for the first CUDA machine."""

from __future__ import annotations

import json

import pytest

from bench import gpu_memory_check as check


def test_configurations_cover_three_sizes_and_four_variants():
    configs = check.configurations()
    assert {c["model"] for c in configs} == set(check.MODELS)
    assert {c["variant"] for c in configs} == {"lora", "qlora", "dora", "loraplus"}
    assert len(configs) == 16


def test_dry_run_lists_configurations_with_both_estimates(tmp_path, capsys):
    out = tmp_path / "rows.json"
    code = check.main(
        [
            "--dry-run",
            "--models",
            "meta-llama/Llama-3.2-1B",
            "--variants",
            "qlora",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Llama-3.2-1B qlora s2048 b1 ckpt" in printed
    rows = json.loads(out.read_text())
    assert len(rows) == 2  # the 1B runs both settings
    for row in rows:
        assert row["trace_bytes"] > 0 and row["analytic_bytes"] > 0
        # The calibrated analytic model agrees with the trace on these too.
        assert row["analytic_bytes"] / row["trace_bytes"] == pytest.approx(1, abs=0.1)
