from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advisor.architecture import from_hf_config
from advisor.catalog.models import find_model, models
from advisor.memory import (
    CUDA_CONTEXT_BYTES,
    FIT_MARGIN,
    GIB,
    GRADIENT_BYTES_PER_PARAM,
    NCCL_BUFFER_BYTES,
    NF4_DQ_BYTES_PER_PARAM,
    WORKER_ALLOCATOR,
    WORKER_ALLOCATOR_CONF,
    FitMargin,
    estimate,
    multi_card_estimate,
    weights_only_bytes,
)
from advisor.profile import VARIANT_NAMES, TrainingSettings
from advisor.variants import Combination, combination


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


# Several cards: the estimate models what the worker runs (worker/distributed.py), no longer
# a layer-wise split (device_map='auto', which divided everything, activations included, by
# the card count and which the worker never ran): DDP, each card holding the whole run, or
# FSDP, sharding the model's state but not the activations.


def test_ddp_holds_the_whole_run_on_every_card_plus_its_buckets_and_nccl():
    arch = find_model("meta-llama/Llama-3.2-1B").architecture
    one = estimate(arch, TrainingSettings(), Combination("lora"))
    two = estimate(arch, TrainingSettings(), Combination("lora"), gpu_count=2)
    assert two.strategy == "ddp" and one.strategy is None
    assert two.breakdown.weights == one.breakdown.weights
    assert two.breakdown.activations == one.breakdown.activations
    assert two.breakdown.optimizer == one.breakdown.optimizer
    buckets = one.trainable_params * GRADIENT_BYTES_PER_PARAM
    assert two.breakdown.gradients == pytest.approx(one.breakdown.gradients + buckets)
    assert two.total_bytes > one.total_bytes + NCCL_BUFFER_BYTES
    assert any(a.startswith("DDP over 2 cards") for a in two.assumptions)


def test_fsdp_shards_the_state_and_keeps_the_gathered_units_and_the_activations():
    arch = find_model("meta-llama/Llama-2-70b-hf").architecture
    training, lora = TrainingSettings(), Combination("lora")
    one = estimate(arch, training, lora)
    four = estimate(arch, training, lora, gpu_count=4, strategy="fsdp")
    eight = estimate(arch, training, lora, gpu_count=8, strategy="fsdp")
    assert four.total_bytes < one.total_bytes / 3
    assert eight.breakdown.weights < four.breakdown.weights
    # not divided: every card runs its own micro batch
    assert four.breakdown.activations == one.breakdown.activations
    # the embedding, head and two blocks stay whole on every card
    root = (arch.embedding_params + arch.lm_head_params) * 2
    assert four.breakdown.weights > one.breakdown.weights / 4 + root
    assert four.breakdown.optimizer == pytest.approx(one.breakdown.optimizer / 4)


def test_the_multi_card_estimate_runs_ddp_when_one_card_holds_it_else_fsdp():
    arch = find_model("meta-llama/Llama-2-7b-hf").architecture
    training, lora = TrainingSettings(), Combination("lora")
    one = estimate(arch, training, lora)
    roomy = one.total_gib * 2
    assert multi_card_estimate(arch, training, lora, 2, roomy).strategy == "ddp"
    assert multi_card_estimate(arch, training, lora, 2, None).strategy == "ddp"
    tight = multi_card_estimate(arch, training, lora, 2, one.total_gib * 0.8)
    assert tight.strategy == "fsdp" and tight.total_gib < one.total_gib
    assert multi_card_estimate(arch, training, lora, 1, one.total_gib * 0.8).strategy is None


# -- the whole run -------------------------------------------------------------------


def test_the_worker_allocator_is_expandable_segments():
    assert WORKER_ALLOCATOR_CONF == "expandable_segments:True"
    assert WORKER_ALLOCATOR == "expandable_segments"
    arch = find_model("meta-llama/Llama-3.2-1B").architecture
    e = estimate(arch, TrainingSettings(), Combination("lora"))
    assert e.run.allocator == "expandable_segments"
    assert e.as_dict()["whole_run"]["allocator"] == "expandable_segments"


def test_total_is_the_highest_phase_reserved_with_workspaces_and_context():
    arch = find_model("meta-llama/Meta-Llama-3-8B").architecture
    for variant in VARIANT_NAMES:
        for seq_len in (256, 4096):
            e = estimate(arch, TrainingSettings(seq_len=seq_len), Combination(variant))
            phases = {phase.name: phase for phase in e.run.phases}
            assert set(phases) == {"load", "training"}
            assert phases["training"].allocated == e.peak_allocated_bytes
            highest = max(phase.reserved for phase in phases.values())
            assert e.reserved_bytes == highest + e.run.cublas_workspaces
            assert e.total_bytes == e.reserved_bytes + CUDA_CONTEXT_BYTES
            assert e.reserved_bytes > e.peak_allocated_bytes


def test_qloras_load_upcast_is_counted_and_can_set_the_peak():
    """peft's prepare_model_for_kbit_training casts Llama-3-8B's 16-bit embeddings, head and
    norms (1.05e9 parameters) to fp32 one by one, while the 4-bit blocks sit on the card: at
    the head all are fp32 and the head's bf16 copy still exists; the embedding's freed bf16
    block (too small for the head's fp32 copy) is still reserved. For a short sequence this is
    more than any step holds."""
    arch = find_model("meta-llama/Meta-Llama-3-8B").architecture
    short = estimate(arch, TrainingSettings(seq_len=256), Combination("qlora"))
    load = next(phase for phase in short.run.phases if phase.name == "load")
    four_bit = weights_only_bytes(arch, quantized=True) - arch.unquantized_params * 2
    head = arch.vocab_size * arch.hidden_size
    assert load.allocated == pytest.approx(four_bit + 4 * arch.unquantized_params + 2 * head)
    assert load.fragmentation == pytest.approx(2 * (arch.unquantized_params - head))
    assert short.run.highest.name == "load"
    assert short.reserved_bytes > short.peak_allocated_bytes * 1.3
    assert any("prepare_model_for_kbit_training" in a for a in short.assumptions)
    # LoRA loads its 16-bit weights and nothing more; a long sequence's step outgrows the load.
    lora = estimate(arch, TrainingSettings(seq_len=256), Combination("lora"))
    assert next(p for p in lora.run.phases if p.name == "load").allocated == arch.total_params * 2
    long = estimate(arch, TrainingSettings(seq_len=8192), Combination("qlora"))
    assert long.run.highest.name == "training"
    # fp32 training casts nothing.
    fp32 = estimate(arch, TrainingSettings(seq_len=256, precision="fp32"), Combination("qlora"))
    assert next(p for p in fp32.run.phases if p.name == "load").fragmentation == 0


def test_default_allocator_reserves_slivers_in_proportion_to_what_varies():
    arch = find_model("meta-llama/Llama-3.2-3B").architecture
    t = TrainingSettings(seq_len=768, micro_batch_size=4, gradient_checkpointing=False)
    expandable = estimate(arch, t, Combination("lora"))
    default = estimate(arch, t, Combination("lora"), allocator="default")
    assert default.peak_allocated_bytes == expandable.peak_allocated_bytes
    assert default.reserved_bytes > expandable.reserved_bytes
    slivers = default.run.highest.fragmentation - expandable.run.highest.fragmentation
    assert slivers == pytest.approx(0.14 * default.breakdown.activations)


def test_an_evaluation_pass_is_a_phase_of_its_own():
    arch = find_model("Qwen/Qwen2.5-7B").architecture
    t = TrainingSettings(seq_len=1024, micro_batch_size=8)
    plain = estimate(arch, t, Combination("lora"))
    evaluated = estimate(arch, t, Combination("lora"), evaluation=True)
    phase = next(p for p in evaluated.run.phases if p.name == "evaluation")
    # No grad: the weights, adapter and optimizer state, one block in flight and the loss.
    assert plain.breakdown.weights < phase.allocated < plain.peak_allocated_bytes
    assert evaluated.total_bytes >= plain.total_bytes
    assert evaluated.as_dict()["whole_run"]["evaluation_allocated"] > 0


def test_fits_asks_for_the_margin_on_the_total():
    arch = find_model("meta-llama/Llama-2-7b-hf").architecture
    e = estimate(arch, TrainingSettings(), Combination("lora"))
    assert e.margin.fraction == FIT_MARGIN and "published" in e.margin.source
    needed = e.total_gib * (1 + FIT_MARGIN)
    assert e.fits(needed + 1e-6) and not e.fits(needed - 1e-3)
    assert not e.fits(e.total_gib)  # the total alone is not enough
    assert e.headroom_gib(needed + 1) == pytest.approx(1)
    answer = e.as_dict(needed - 0.5)
    assert answer["fits"] is False and answer["headroom_gib"] == pytest.approx(-0.5, abs=1e-3)
    assert answer["margin"] == FIT_MARGIN and answer["margin_source"] == e.margin.source


def test_a_cards_measured_margin_replaces_the_published_one():
    arch = find_model("meta-llama/Llama-2-7b-hf").architecture
    measured = FitMargin.measured("h100-80gb", jobs=40, fraction=0.02)
    e = estimate(arch, TrainingSettings(), Combination("lora"), margin=measured)
    assert e.margin.source == "40 measured jobs on h100-80gb"
    assert e.fits(e.total_gib * 1.02 + 1e-6)
    with pytest.raises(ValueError):
        FitMargin.measured("t4", jobs=0, fraction=0.02)


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
    qlora = estimate(arch, t, Combination("qlora"))
    lora = estimate(arch, t, Combination("lora"))
    # A step always holds less with 4-bit blocks.
    assert qlora.peak_allocated_bytes < lora.peak_allocated_bytes
    # The whole run too, unless the load's fp32 upcast of the embeddings and head outgrows
    # LoRA's 16-bit weights: a model made mostly of its vocabulary (see the next test).
    load = next(phase for phase in qlora.run.phases if phase.name == "load")
    if load.reserved < arch.total_params * 2:
        assert qlora.total_bytes < lora.total_bytes


def test_qlora_can_need_more_than_lora_when_the_vocabulary_is_most_of_the_model():
    """peft's prepare_model_for_kbit_training holds every non-4-bit parameter in fp32 (and
    the freed 16-bit copies reserved): 6 bytes each at the load. A 1.6B model whose untied
    256k vocabulary is 1.05B of its parameters needs more for QLoRA than for LoRA."""
    arch = from_hf_config(
        {
            "model_type": "llama",
            "hidden_size": 2048,
            "intermediate_size": 5632,
            "num_hidden_layers": 8,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "vocab_size": 256000,
            "tie_word_embeddings": False,
        }
    )
    t = TrainingSettings(seq_len=512)
    qlora = estimate(arch, t, Combination("qlora"))
    lora = estimate(arch, t, Combination("lora"))
    assert arch.total_params > 1e9
    assert qlora.peak_allocated_bytes < lora.peak_allocated_bytes
    assert qlora.run.highest.name == "load"
    assert qlora.total_bytes > lora.total_bytes


def test_gib_unit():
    assert GIB == 2**30


@settings(max_examples=200, deadline=None)
@given(
    arch=archs,
    t=trainings,
    combo=combos,
    allocator=st.sampled_from(["expandable_segments", "default"]),
)
def test_the_whole_run_reserves_at_least_every_phase(arch, t, combo, allocator):
    t = _safe(arch, t)
    e = estimate(arch, t, combo, allocator=allocator, evaluation=True)
    for phase in e.run.phases:
        assert phase.rounding >= 0 and phase.fragmentation >= 0
        assert e.reserved_bytes >= phase.reserved >= phase.allocated
    assert e.reserved_bytes >= e.peak_allocated_bytes
    assert e.total_bytes == pytest.approx(e.reserved_bytes + CUDA_CONTEXT_BYTES)
