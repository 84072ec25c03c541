"""The whole run, with torch: the tracer's answer goes through the advisor's `whole_run`, the
load term is what peft's real prepare_model_for_kbit_training allocates, and the installed
bitsandbytes keeps no layer input for backward (the cause of the published QLoRA gap is not
in the worker's stack)."""

from __future__ import annotations

import pytest
import torch

from advisor.catalog.models import find_model
from advisor.memory import StepPeak, estimate, whole_run
from advisor.profile import TrainingSettings
from advisor.variants import Combination
from loracle import recipe
from memtrace import build
from memtrace.trace import make_plan, trace_memory
from memtrace.tracker import StorageTracker


def test_the_trace_answers_the_whole_run_through_the_advisors_function():
    model = find_model("HuggingFaceTB/SmolLM2-135M")
    training = TrainingSettings(seq_len=256, micro_batch_size=2)
    combo = Combination("qlora")
    result = trace_memory(model.config, training, combo)
    arch = model.architecture
    for allocator in ("expandable_segments", "default"):
        traced = result.estimate(combo, allocator=allocator)  # type: ignore[arg-type]
        step = StepPeak(float(result.peak_bytes), float(result.by_kind["activations"]))
        assert traced.run == whole_run(arch, training, combo, step, allocator=allocator)  # type: ignore[arg-type]
        phases = {phase.name: phase for phase in traced.run.phases}
        assert phases["training"].allocated == result.peak_bytes == traced.peak_allocated_bytes
        # The load and everything else come from the architecture: the same as the analytic's.
        analytic = estimate(arch, training, combo, allocator=allocator)  # type: ignore[arg-type]
        assert phases["load"] == next(p for p in analytic.run.phases if p.name == "load")
        assert traced.total_bytes == pytest.approx(analytic.total_bytes, rel=0.1)
        answer = traced.as_dict(8.0)
        assert answer["whole_run"]["allocator"] == allocator
        assert answer["fits"] == (answer["total_gib"] * (1 + answer["margin"]) <= 8.0)


@pytest.mark.parametrize(
    "name", ["TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", "meta-llama/Llama-3.2-1B"]
)
def test_the_load_term_is_what_peft_prepare_allocates(name):
    """Trace what the worker does after bitsandbytes has quantized the blocks: peft's
    prepare_model_for_kbit_training (fp32 upcast of every non-4-bit parameter, one at a time)
    and loracle's restore_compute_dtype (back to bf16). Its peak is the analytic load term:
    the 4-bit blocks, every upcast parameter in fp32, and the 16-bit copy of the largest
    (untied TinyLlama: embedding and head; tied Llama-3.2-1B: the one shared matrix)."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    entry = find_model(name)
    training = TrainingSettings(seq_len=128)
    combo = Combination("qlora")
    plan = make_plan(training, combo).model_copy(update={"optimizer": "adamw"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            build.hf_config(entry.config), dtype=torch.bfloat16
        )
    build._quantize_4bit(model, plan, torch.bfloat16, "meta")
    tracker = StorageTracker(count_device="meta")
    tracker.register(model.parameters(), "weights")
    tracker.register(model.buffers(), "weights")
    quant = [
        t
        for p in model.parameters()
        for state in [getattr(p, "quant_state", None)]
        if state is not None
        for t in (state.absmax, state.code, getattr(state, "offset", None), state.state2.absmax)
        if isinstance(t, torch.Tensor)
    ]
    tracker.register(quant, "weights")
    with tracker:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        recipe.restore_compute_dtype(model, torch.bfloat16)
    traced_peak = tracker.report(cuda=True).total
    load = next(
        phase
        for phase in estimate(entry.architecture, training, combo).run.phases
        if phase.name == "load"
    )
    assert traced_peak == pytest.approx(load.allocated, rel=0.01)
    # And the upcast is most of it: far above the 4-bit model as it sits for training.
    assert traced_peak > 1.5 * estimate(entry.architecture, training, combo).breakdown.weights


def test_the_installed_bitsandbytes_keeps_no_layer_input_for_backward():
    """bitsandbytes of 2023 kept each 4-bit layer's input on the autograd context
    (`ctx.tensors = (A, B)`, TimDettmers/bitsandbytes@29e3420c), which is most of the QLoRA
    gap of the published litgpt rows (tests/advisor/test_published_runs.py). The version the
    worker runs keeps only the packed weight: the gap is not in loracle's stack."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_functional

    # bitsandbytes caches its quantization code table on the device of its first use; a meta
    # trace earlier in this process leaves a meta one, which a real quantization cannot copy.
    for key, table in list(bnb_functional.name2qmap.items()):
        if table.is_meta:
            del bnb_functional.name2qmap[key]
    layer = bnb.nn.Linear4bit(128, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(
        torch.randn(64, 128), requires_grad=False, quant_type="nf4"
    )._quantize(torch.device("cpu"))
    x = torch.randn(8, 128, requires_grad=True)
    out = layer(x)
    node = out.grad_fn
    while node is not None and not hasattr(node, "tensors"):
        node = node.next_functions[0][0] if node.next_functions else None
    assert node is not None, "MatMul4Bit's backward node"
    kept_input, kept_weight = node.tensors
    assert kept_input is None and kept_weight is not None
