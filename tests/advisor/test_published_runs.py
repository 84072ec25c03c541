"""The memory model against every published measurement of advisor/data/published-runs.csv.

The table in docs/memory.md is rendered from the same rows; these tests hold the model to the
bounds the issue sets, keep the fitted constants equal to what the table gives, and keep the
published table true.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from advisor import calibration as cal
from advisor.catalog.models import find_model
from advisor.memory import DEFAULT_FRAGMENTATION, FIT_MARGIN, GIB, weights_only_bytes

DOCS = Path(__file__).parents[2] / "docs" / "memory.md"
RUNS = cal.published_runs()


def _id(c: cal.Comparison) -> str:
    return f"{c.run.id}-s{c.seq_len}"


def test_every_row_is_compared_or_says_why():
    uses = {run.use for run in RUNS}
    assert uses == {"held", "lower-bound", "other-stack", "weights", "bound", "excluded"}
    for run in RUNS:
        assert run.source and run.value_bytes > 0, run.id
        found = cal.compare(run)
        if run.use == "excluded":
            assert not found and run.note, run.id
        else:
            assert found, run.id
    # The research table's 147 rows and the 18 of the earlier table, each once.
    assert len({run.id for run in RUNS}) == len(RUNS) == 165
    assert sum(run.id.startswith("P") for run in RUNS) == 18


def test_held_rows_are_the_stack_loracle_models():
    held = [run for run in RUNS if run.use == "held"]
    assert len(held) >= 9
    for run in held:
        assert run.allocator == "default" and "peft" in run.stack
        assert run.micro_batch and run.micro_batch > 1  # padded batches of varying length
        assert run.quantity.startswith("reserved peak")
    assert {run.variant for run in held} >= {"lora", "dora"}


def test_total_meets_the_issue_bounds_on_whole_run_reserved_peaks():
    """total_gib at least the measured whole-run max_memory_reserved (3% under at most) and
    at most 20% above it, for at least 90% of the held rows."""
    held = cal.comparisons("held")
    outside = [f"{c.run.id}: {c.error:+.1%}" for c in held if not c.within]
    assert sum(c.within for c in held) / len(held) >= cal.SHARE_WITHIN, outside


@pytest.mark.parametrize("comparison", cal.comparisons("lower-bound"), ids=_id)
def test_reserved_is_at_least_every_post_step_statistic(comparison):
    """p99 and mean of reserved memory sampled after each step: the run's peak is at least
    these, so the estimate of that peak must be too."""
    assert comparison.error >= 0, (
        f"{comparison.run.id}: {comparison.run.quantity} {comparison.run.value_bytes / GIB:.2f} "
        f"GiB, estimate {comparison.estimate_bytes / GIB:.2f} GiB"
    )


def test_the_fitted_fragmentation_is_what_the_table_gives():
    assert DEFAULT_FRAGMENTATION == cal.fitted_fragmentation()


def test_the_fit_margin_is_the_tables_spread():
    assert FIT_MARGIN == cal.derived_margin()
    # Two standard deviations of nine errors between +2% and +20%: a few percent, not zero.
    assert 0.02 <= FIT_MARGIN <= 0.2


@pytest.mark.parametrize("comparison", cal.comparisons("weights"), ids=_id)
def test_weights_within_15_percent(comparison):
    assert abs(comparison.error) <= cal.TOLERANCE, comparison.run.id


def test_torchtune_lora_reserved_within_15_percent():
    """The earlier table's reserved rows (torchtune's own LoRA, unpacked and padded, default
    allocator), at both ends of their unstated length, as before."""
    rows = [c for c in cal.comparisons("other-stack") if c.run.stack == "torchtune"]
    assert len(rows) == 8
    for c in rows:
        assert abs(c.error) <= cal.TOLERANCE, f"{c.run.id} at {c.seq_len}: {c.error:+.1%}"


def test_other_stacks_lora_allocated_peaks_within_7_percent():
    """litgpt's LoRA runs (its own layers, bf16 adapters) measure max_memory_allocated at
    their longest batch: the step's peak is within 7% of every one."""
    rows = [
        c
        for c in cal.comparisons("other-stack")
        if c.run.variant == "lora" and c.compared_with == "peak_allocated_gib"
    ]
    assert len(rows) >= 6
    for c in rows:
        assert abs(c.error) <= 0.07, f"{c.run.id}: {c.error:+.1%}"


def test_bounds_are_bounds():
    """torchtune's QLoRA reserved figure is its load-time torchao artefact: an upper bound on
    the step, which the estimate must sit under and above the weights."""
    bounds = cal.comparisons("bound")
    assert bounds
    for c in bounds:
        assert c.estimate_bytes <= c.run.value_bytes
        arch = find_model(c.run.model).architecture
        assert c.estimate_bytes > weights_only_bytes(arch, quantized=True)


# -- the QLoRA gap --------------------------------------------------------------------


def _kept_inputs(arch, tokens: int) -> float:
    """What a 2023 bitsandbytes kept per 4-bit layer for backward (MatMul4Bit.forward:
    `ctx.tensors = (A, B)`, TimDettmers/bitsandbytes@29e3420c; the installed 0.50.2 keeps
    `(None, B)`): the input of each. q/k/v share one input and gate/up another; o_proj's
    input is attention's output, which attention keeps anyway; down_proj's is the MLP's
    product, which nothing else keeps. 16-bit, per token and block."""
    per_token = 2 * arch.hidden_size + arch.intermediate_size
    return per_token * 2 * tokens * arch.num_hidden_layers


def test_the_published_qlora_gap_is_bitsandbytes_keeping_each_layers_input():
    """litgpt's 2023 resource tables (bitsandbytes 0.41.1) measure LoRA and QLoRA with
    everything else the same. Against them the step's peak is 3-4% low for LoRA and 20% low
    for QLoRA. The QLoRA-only part of the gap (measured QLoRA - LoRA, less the modelled
    QLoRA - LoRA) is mostly the inputs that bitsandbytes' MatMul4Bit then kept: the term
    explains at least 70% of it for both models, and is absent from the stack the worker
    runs (tests/memtrace/test_whole_run.py checks the installed bitsandbytes keeps none)."""
    by_id = {c.run.id: c for c in cal.comparisons("other-stack")}
    for lora_id, qlora_id in (("R59", "R61"), ("R63", "R65")):
        lora, qlora = by_id[lora_id], by_id[qlora_id]
        assert lora.run.model == qlora.run.model and lora.run.seq_len == qlora.run.seq_len
        assert qlora.error < -0.15 < -0.05 < lora.error
        measured_gap = qlora.run.value_bytes - lora.run.value_bytes
        modelled_gap = qlora.estimate_bytes - lora.estimate_bytes
        arch = find_model(qlora.run.model).architecture
        tokens = (qlora.run.seq_len or 0) * (qlora.run.micro_batch or 1)
        kept = _kept_inputs(arch, tokens)
        unexplained = measured_gap - modelled_gap
        assert unexplained > 0
        assert 0.7 * unexplained <= kept <= unexplained


def test_published_table_is_the_tables():
    """docs/memory.md publishes the table these rows and the current model give."""
    assert cal.table() in DOCS.read_text(encoding="utf-8")
