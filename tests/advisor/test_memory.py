from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advisor.architecture import from_hf_config
from advisor.calibration import TOLERANCE, measured_comparisons, published_rows
from advisor.catalog.models import find_model, models
from advisor.memory import GIB, NF4_DQ_BYTES_PER_PARAM, estimate, weights_only_bytes
from advisor.profile import VARIANT_NAMES, TrainingSettings
from advisor.variants import Combination, combination

COMPARISONS = measured_comparisons()


def test_every_measured_published_row_is_compared():
    measured = [r for r in published_rows() if r.measured]
    assert len(measured) >= 12
    assert {c.row for c in COMPARISONS} == set(measured)


@pytest.mark.parametrize(
    "comparison",
    [c for c in COMPARISONS if c.comparable],
    ids=lambda c: (
        f"{c.row.model.split('/')[1]}-{c.row.method}-{c.row.lora_rank}-"
        f"{c.row.lora_targets or 'na'}-{c.seq_len}".replace(" ", "_")
    ),
)
def test_published_measurements_within_15_percent(comparison):
    assert abs(comparison.error) <= TOLERANCE, (
        f"{comparison.row.source}: published {comparison.row.value_bytes / 1e9:.2f} GB "
        f"({comparison.row.quantity}), estimate {comparison.estimate_bytes / 1e9:.2f} GB "
        f"({comparison.compared_with}) at seq_len {comparison.seq_len}"
    )


def test_rows_that_bound_rather_than_measure_the_step_are_bounds():
    bounds = [c for c in COMPARISONS if not c.comparable]
    assert bounds, "the torchtune QLoRA row is reported as a bound"
    for c in bounds:
        assert c.reason
        # An upper bound on the step: the estimate must sit under it, and above the weights.
        assert c.estimate_bytes <= c.row.value_bytes * (1 + TOLERANCE)
        arch = find_model(c.row.model).architecture
        weights = weights_only_bytes(arch, quantized=c.row.method == "qlora", double_quant=True)
        assert c.estimate_bytes > weights


def test_nf4_double_quant_is_about_4127_bits():
    assert NF4_DQ_BYTES_PER_PARAM * 8 == pytest.approx(4.127, abs=1e-3)


def test_qlora_7b_is_about_6_gb_and_lora_about_16():
    """The design document: 'a seven-billion-parameter model needs only about six
    gigabytes of memory instead of about sixteen' (short sequences, checkpointing)."""
    arch = find_model("meta-llama/Llama-2-7b-hf").architecture
    t = TrainingSettings(seq_len=512, lora_rank=16)
    q = estimate(arch, t, Combination("qlora")).total_bytes / 1e9
    lo = estimate(arch, t, Combination("lora")).total_bytes / 1e9
    assert 4.5 <= q <= 7.5
    assert 14 <= lo <= 18


def test_breakdown_adds_up_to_total():
    arch = find_model("Qwen/Qwen2.5-7B").architecture
    for v in VARIANT_NAMES:
        e = estimate(arch, TrainingSettings(), Combination(v))
        assert e.breakdown.allocated + e.breakdown.overhead == pytest.approx(e.total_bytes)
        d = e.as_dict(24.0)
        assert sum(d["breakdown"].values()) == pytest.approx(d["total_gib"], abs=0.01)


def test_loraplus_is_memory_neutral_and_dora_costs_more():
    arch = find_model("meta-llama/Meta-Llama-3-8B").architecture
    t = TrainingSettings()
    lora = estimate(arch, t, Combination("lora"))
    assert estimate(arch, t, Combination("loraplus")).total_bytes == lora.total_bytes
    dora = estimate(arch, t, Combination("dora"))
    assert dora.total_bytes > lora.total_bytes
    # DoRA's extra parameters are the magnitudes: under 5% of LoRA's adapter (the seed).
    assert 0 < dora.trainable_params / lora.trainable_params - 1 < 0.05


def test_dora_dropout_keeps_weight_copies():
    arch = find_model("meta-llama/Llama-2-7b-hf").architecture
    t = TrainingSettings(gradient_checkpointing=False, seq_len=512)
    combo = Combination("dora")
    lean = estimate(arch, t, combo, lora_dropout=0.0)
    heavy = estimate(arch, t, combo, lora_dropout=0.05)
    # a 16-bit copy of every adapted weight: about the whole model in bf16 again
    assert heavy.total_bytes - lean.total_bytes > 0.9 * arch.block_linear_weight_params * 2


def test_gpu_count_splits_the_model():
    arch = find_model("meta-llama/Llama-2-70b-hf").architecture
    one = estimate(arch, TrainingSettings(), Combination("lora"))
    four = estimate(arch, TrainingSettings(), Combination("lora"), gpu_count=4)
    assert four.total_bytes < one.total_bytes / 3


# -- properties -------------------------------------------------------------------

CATALOG = [m.architecture for m in models()]
archs = st.sampled_from(CATALOG)
variants = st.sampled_from(VARIANT_NAMES)
combos = st.sampled_from(
    [Combination(v) for v in VARIANT_NAMES]
    + [combination("qlora", ["dora"]), combination("qlora", ["loraplus"])]
)
trainings = st.builds(
    TrainingSettings,
    seq_len=st.integers(1, 65536),
    micro_batch_size=st.integers(1, 16),
    gradient_checkpointing=st.booleans(),
    lora_rank=st.integers(1, 512),
    target_modules=st.sampled_from(["all-linear", ["q_proj", "v_proj"], ["down_proj"]]),
    optimizer=st.sampled_from(["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd"]),
    precision=st.sampled_from(["bf16", "fp16", "fp32"]),
)


def _safe(arch, t):
    """Phi-3 fuses q/k/v: give it names it has."""
    if arch.fused and t.target_modules != "all-linear":
        return t.model_copy(update={"target_modules": ["qkv_proj", "down_proj"]})
    return t


@settings(max_examples=300, deadline=None)
@given(arch=archs, t=trainings, combo=combos, data=st.data())
def test_estimates_rise_with_seq_len_micro_batch_and_rank(arch, t, combo, data):
    t = _safe(arch, t)
    before = estimate(arch, t, combo)
    longer = t.model_copy(update={"seq_len": t.seq_len + data.draw(st.integers(1, 4096))})
    wider = t.model_copy(update={"micro_batch_size": t.micro_batch_size + 1})
    ranker = t.model_copy(update={"lora_rank": t.lora_rank + data.draw(st.integers(1, 64))})
    for changed in (longer, wider):
        after = estimate(arch, changed, combo)
        assert after.peak_allocated_bytes >= before.peak_allocated_bytes
        if before.peak_phase != "optimizer":
            # strictly, whenever activations are part of the peak (a few-token step
            # peaks in the optimizer step, where activations are gone)
            assert after.peak_allocated_bytes > before.peak_allocated_bytes
    assert estimate(arch, ranker, combo).peak_allocated_bytes > before.peak_allocated_bytes


@settings(max_examples=300, deadline=None)
@given(arch=archs, t=trainings, combo=combos)
def test_gradient_checkpointing_never_raises_the_estimate(arch, t, combo):
    t = _safe(arch, t)
    on = t.model_copy(update={"gradient_checkpointing": True})
    off = t.model_copy(update={"gradient_checkpointing": False})
    assert estimate(arch, on, combo).total_bytes <= estimate(arch, off, combo).total_bytes


@settings(max_examples=300, deadline=None)
@given(arch=archs.filter(lambda a: a.total_params > 1e9), t=trainings)
def test_qlora_is_below_lora_for_every_model_over_1b(arch, t):
    t = _safe(arch, t)
    assert (
        estimate(arch, t, Combination("qlora")).total_bytes
        < estimate(arch, t, Combination("lora")).total_bytes
    )


@settings(max_examples=150, deadline=None)
@given(
    hidden=st.sampled_from([1024, 2048, 3072, 4096, 5120, 8192]),
    layers=st.integers(8, 96),
    heads=st.sampled_from([8, 16, 32, 64]),
    kv_div=st.sampled_from([1, 2, 4, 8]),
    ffn=st.floats(2.0, 4.0),
    vocab=st.sampled_from([32000, 50257, 128256, 151936, 256000]),
    tied=st.booleans(),
    t=trainings,
)
def test_qlora_below_lora_for_random_configs_over_1b(
    hidden, layers, heads, kv_div, ffn, vocab, tied, t
):
    cfg = {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(hidden * ffn),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // kv_div),
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
    }
    arch = from_hf_config(cfg)
    if arch.total_params <= 1e9:
        return
    assert (
        estimate(arch, t, Combination("qlora")).total_bytes
        < estimate(arch, t, Combination("lora")).total_bytes
    )


def test_gib_unit():
    assert GIB == 2**30
