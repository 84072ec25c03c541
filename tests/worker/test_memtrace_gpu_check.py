"""bench/gpu_memory_check.py without a GPU: its CPU side (configurations, both estimates)
must run, so the script is ready for the first CUDA machine."""

from __future__ import annotations

import json

import pytest

from bench import gpu_memory_check as check


def test_configurations_cover_three_sizes_and_four_variants_largest_first():
    configs = check.configurations()
    assert {c["model"] for c in configs} == set(check.MODELS)
    assert {c["variant"] for c in configs} == {"lora", "qlora", "dora", "loraplus"}
    assert len(configs) == 16
    # A budget guard drops from the end: the 8B runs first, whatever order is asked for.
    shuffled = check.configurations(tuple(reversed(check.MODELS)))
    assert shuffled == configs
    assert configs[0]["model"] == "meta-llama/Llama-3.1-8B"
    sizes = [check._parameters(c["model"]) for c in configs]
    assert sizes == sorted(sizes, reverse=True)
    # The padded setting goes to the smallest model.
    padded = {c["model"] for c in configs if c["training"]["micro_batch_size"] > 1}
    assert padded == {"meta-llama/Llama-3.2-1B"}


def test_a_skipped_configuration_fails_the_run(tmp_path, capsys):
    """A budget too small for any GPU run skips everything: the table is incomplete, and
    the exit status says so (the estimates are still there)."""
    out = tmp_path / "rows.json"
    code = check.main(
        ["--no-trace", "--variants", "lora", "--budget-s", "1", "--jobs", "1", "--out", str(out)]
    )
    assert code == 1
    rows = json.loads(out.read_text())
    assert len(rows) == 4 and all(r["error"].startswith("skipped") for r in rows)
    assert all(r["analytic_bytes"] > 0 for r in rows)
    assert "4 of 4 configurations failed or were skipped" in capsys.readouterr().out


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
            "--jobs",
            "1",
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
