"""The stored calibration grid must be what the tracer measures today.

Retracing all of `tests/advisor/data/trace_grid.json` takes tens of minutes, so every run
retraces a sample: fixed rows that cover every variant and every modelling path of the grid
(so a failure reproduces; about 25 s on 2 cores) and two more drawn from the whole grid
(seeded by `LORACLE_GRID_SEED`, else by the day, so the sample walks the grid over time; the
seed is in the test id). A trace is deterministic, so the figures must match to the byte;
when a library upgrade or a tracer change moves them, regenerate the grid (`python -m
memtrace.grid run --out ...`, or `--update` with the rows the change can touch) and
review the change.
"""

from __future__ import annotations

import datetime
import json
import os
import random
from pathlib import Path

import pytest

from advisor.variants import CALIBRATED_VARIANTS
from memtrace import grid
from memtrace.runner import TRACER_VERSION, library_versions

GRID_FILE = Path(__file__).parents[1] / "advisor" / "data" / "trace_grid.json"
DOCUMENT = json.loads(GRID_FILE.read_text(encoding="utf-8"))
ROWS = {r["id"]: r for r in DOCUMENT["rows"]}

# Every variant, and every modelling path the grid has, in few rows (with the two drawn ones,
# about 25 s on 2 cores, imports included; the four rows before these took 12-13 s):
FIXED = [
    # tied 128k-vocabulary head; a padded micro batch (memory-efficient attention, the
    # additive mask per block) without checkpointing
    "Llama-3.2-1B-lora-s512-b4-nockpt",
    # 4-bit linears over 512 rows (bitsandbytes' fallback) without checkpointing
    "Llama-3.2-1B-qlora-s512-b1-nockpt",
    "Llama-3.2-1B-dora-s512-b1-ckpt",
    "TinyLlama-1.1B-intermediate-step-1431k-3T-loraplus-s512-b4-ckpt",
    # eager attention with soft-capped scores and logits, 2048 tokens, padded, no checkpointing
    "gemma-2-2b-lora-s2048-b4-nockpt",
    # fused qkv_proj and gate_up_proj under DoRA (its fp32 output gradients), 2048 tokens
    "Phi-3-mini-4k-instruct-dora-s2048-b1-ckpt",
    # without checkpointing attention keeps the value states, a view of the fused qkv_proj
    # output, and with them all of it (no KV cache copies them out, as in the Trainer)
    "Phi-3-mini-4k-instruct-qlora-s512-b4-nockpt",
    # a 7B QLoRA step whose peak is in a block recomputed during backward, with the
    # dequantized weight of bitsandbytes' fallback live
    "Llama-2-7b-hf-qlora-s512-b1-ckpt",
    # 7-8B at 2048 tokens and padded batches: the largest activations of the grid
    "Mistral-7B-v0.1-qlora-s2048-b4-nockpt",
    "Meta-Llama-3-8B-dora-s512-b1-nockpt",
    # q/k/v biases and a 152k vocabulary
    "Qwen2.5-0.5B-loraplus-s2048-b4-ckpt",
    # small 4-bit weights over 8192 rows
    "SmolLM2-135M-qlora-s2048-b4-nockpt",
]
SEED = int(os.environ.get("LORACLE_GRID_SEED", datetime.date.today().toordinal()))
DRAWN = random.Random(SEED).sample(sorted(set(ROWS) - set(FIXED)), 2)


def test_fixed_rows_cover_every_modelling_path():
    rows = [ROWS[i] for i in FIXED]
    assert {r["variant"] for r in rows} == set(CALIBRATED_VARIANTS)
    models = {r["model"] for r in rows}
    assert "google/gemma-2-2b" in models  # eager attention, soft-capping
    assert "microsoft/Phi-3-mini-4k-instruct" in models  # fused qkv / gate_up
    assert models & {"meta-llama/Llama-2-7b-hf", "meta-llama/Meta-Llama-3-8B"}
    settings = [r["training"] for r in rows]
    assert {t["seq_len"] for t in settings} == set(grid.SEQ_LENS)
    assert {t["micro_batch_size"] for t in settings} == set(grid.MICRO_BATCHES)
    assert {t["gradient_checkpointing"] for t in settings} == {True, False}
    assert {r["peak_phase"] for r in rows} == {"forward", "backward"}


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
