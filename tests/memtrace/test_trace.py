"""The memory tracer: a meta-device trace must agree with the same tracker over real steps.

`trace_memory(device="cpu")` builds the model with real random weights (and real
bitsandbytes NF4 quantization for QLoRA) and runs real training steps on this CPU;
`trace_memory(device="meta", target="cpu")` runs the same steps on meta tensors, with the
CPU's kernels emulated. Within 2% for every variant means what the emulation puts back
(autocast, attention and dropout kernels, bitsandbytes' dispatch, the data-dependent
branches) is what the real run does. The CUDA target is then checked for the kernels a CUDA
run picks.
"""

from __future__ import annotations

import json

import pytest
import torch

from advisor.catalog.models import find_model
from advisor.profile import TrainingSettings
from advisor.variants import Combination, combination
from memtrace.trace import trace_memory
from memtrace.tracker import KINDS, StorageTracker, cuda_block_bytes

TINY = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "tie_word_embeddings": False,
}
# A small real architecture of another family: q/k/v biases, narrow GQA, tied embeddings.
SMALL = {
    "model_type": "qwen2",
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
    "tie_word_embeddings": True,
}
COMBOS = [
    Combination("lora"),
    Combination("qlora"),
    Combination("dora"),
    Combination("loraplus"),
    combination("qlora", ["dora"]),
    combination("qlora", ["loraplus"]),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Real CPU steps with one intra-op thread: on a busy 2-core machine OpenMP's spinning
    threads make them several times slower, and the thread count changes no tensor the
    tracker counts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _settings(**kw) -> TrainingSettings:
    base = {"seq_len": 128, "lora_rank": 8, "precision": "bf16"}
    return TrainingSettings(**{**base, **kw})


CASES = [
    *[
        ("tiny", TINY, c, _settings(micro_batch_size=1, gradient_checkpointing=True))
        for c in COMBOS
    ],
    *[
        ("tiny", TINY, c, _settings(micro_batch_size=2, gradient_checkpointing=False))
        for c in COMBOS
    ],
    *[("small", SMALL, c, _settings(seq_len=256, micro_batch_size=2)) for c in COMBOS[:4]],
    ("tiny-fp32", TINY, Combination("qlora"), _settings(precision="fp32", micro_batch_size=2)),
    (
        "tiny-accum",
        TINY,
        Combination("lora"),
        _settings(gradient_accumulation_steps=4, optimizer="adamw_8bit"),
    ),
]


@pytest.mark.parametrize(
    ("config", "combo", "training"),
    [
        pytest.param(
            cfg,
            combo,
            t,
            id=f"{name}-{combo.label}-{t.micro_batch_size}-"
            f"{'ckpt' if t.gradient_checkpointing else 'nockpt'}",
        )
        for name, cfg, combo, t in CASES
    ],
)
def test_meta_trace_agrees_with_a_real_cpu_step_within_2_percent(config, combo, training):
    real = trace_memory(config, training, combo, device="cpu", target="cpu")
    meta = trace_memory(config, training, combo, device="meta", target="cpu")
    assert real.peak_bytes > 0
    assert abs(meta.peak_bytes / real.peak_bytes - 1) <= 0.02, (real.by_kind, meta.by_kind)
    assert meta.peak_phase == real.peak_phase
    for kind in KINDS:
        assert abs(meta.by_kind[kind] - real.by_kind[kind]) <= 0.02 * real.peak_bytes, kind
    assert meta.trainable_params == real.trainable_params
    assert meta.total_params == real.total_params


def test_cuda_target_uses_flash_without_padding_and_memory_efficient_with_it():
    one = trace_memory(TINY, _settings(micro_batch_size=1), Combination("lora"))
    padded = trace_memory(TINY, _settings(micro_batch_size=2), Combination("lora"))
    # Two layers, two steps, forward and (checkpointing on by default) recomputation.
    assert set(one.attention_kernels) == {"flash"}
    assert set(padded.attention_kernels) == {"efficient"}
    assert not one.holds_scores and not padded.holds_scores


def test_math_kernel_is_reported_when_no_fused_kernel_applies():
    # A padded batch carries a mask, which flash cannot take; head_dim 36 is not a multiple
    # of 8, which memory-efficient attention needs in bf16: sdpa falls back to the math
    # kernel and keeps the s x s scores. (Without a mask flash pads the head dim itself.)
    odd = {**TINY, "hidden_size": 144, "head_dim": 36}
    t = _settings(gradient_checkpointing=False, micro_batch_size=2)
    assert set(
        trace_memory(
            odd, t.model_copy(update={"micro_batch_size": 1}), Combination("lora")
        ).attention_kernels
    ) == {"flash"}
    result = trace_memory(odd, t, Combination("lora"))
    assert set(result.attention_kernels) == {"math"}
    assert result.holds_scores
    longer = trace_memory(odd, t.model_copy(update={"seq_len": 256}), Combination("lora"))
    # Doubling s more than doubles the activations by the s^2 scores every layer keeps
    # (fp32 softmax output, batch x heads x s x s); the efficient kernel grows linearly.
    excess = longer.by_kind["activations"] - 2 * result.by_kind["activations"]
    scores = TINY["num_hidden_layers"] * 2 * TINY["num_attention_heads"] * 4
    assert excess >= 0.8 * scores * (256**2 - 2 * 128**2)
    eff = trace_memory(TINY, t, Combination("lora"))
    eff_long = trace_memory(TINY, t.model_copy(update={"seq_len": 256}), Combination("lora"))
    assert set(eff.attention_kernels) == {"efficient"}
    eff_excess = eff_long.by_kind["activations"] - 2 * eff.by_kind["activations"]
    assert eff_excess < 0.2 * scores * (256**2 - 2 * 128**2)


def test_tied_embeddings_count_once():
    untied = trace_memory(TINY, _settings(), Combination("lora"))
    tied = trace_memory({**TINY, "tie_word_embeddings": True}, _settings(), Combination("lora"))
    head = TINY["vocab_size"] * TINY["hidden_size"] * 2  # bf16
    assert untied.by_kind["weights"] - tied.by_kind["weights"] == cuda_block_bytes(head)


def test_qlora_stores_packed_nf4_with_double_quantized_constants():
    """Each 4-bit linear: numel/2 bytes of packed NF4, one uint8 absmax per 64 weights, one
    fp32 absmax per 256 blocks, an fp32 offset and the two code tables (16 and 256 fp32);
    everything else stays bf16. Every tensor is its own CUDA allocation (512-byte blocks)."""
    result = trace_memory(TINY, _settings(), Combination("qlora"))
    h, i, v = TINY["hidden_size"], TINY["intermediate_size"], TINY["vocab_size"]
    kv = h // TINY["num_attention_heads"] * TINY["num_key_value_heads"]
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]
    per_layer = 0
    for out_f, in_f in shapes:
        n = out_f * in_f
        blocks = -(-n // 64)
        per_layer += sum(
            cuda_block_bytes(b) for b in (n // 2, blocks, 4 * -(-blocks // 256), 4, 16 * 4, 256 * 4)
        )
    norms = 2 * cuda_block_bytes(h * 2)
    rest = 2 * cuda_block_bytes(v * h * 2) + cuda_block_bytes(h * 2)  # embed, head, final norm
    # the rotary embedding's inv_freq and original_inv_freq buffers (fp32, head_dim / 2)
    inv_freq = 2 * cuda_block_bytes(4 * (h // TINY["num_attention_heads"] // 2))
    expected = TINY["num_hidden_layers"] * (per_layer + norms) + rest + inv_freq
    assert result.by_kind["weights"] == expected


def test_tracker_counts_views_and_in_place_results_once():
    with StorageTracker(count_device="meta") as tracker:
        x = torch.empty(1024, device="meta")
        view = x[:512]
        x.add_(1)
        view.mul_(2)
        y = x.reshape(32, 32).t()
        assert tracker.live_bytes(cuda=False) == 4096
        z = y + 1  # a new storage
        assert tracker.live_bytes(cuda=False) == 8192
        del z
        assert tracker.live_bytes(cuda=False) == 4096
    assert tracker.peak_raw.bytes == 8192


def test_transformers_mask_branch_needs_the_patch_and_the_patch_answers_right():
    import transformers.masking_utils as masking

    from memtrace.emulation import Autocast, meta_patches

    mask = torch.empty(2, 64, dtype=torch.bool, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        masking._ignore_causal_mask_sdpa(mask, 64, 64, 0, 0)
    with meta_patches(padded=True, target="cuda", autocast=Autocast("cuda")):
        assert masking._ignore_causal_mask_sdpa(mask, 64, 64, 0, 0) is False
    with meta_patches(padded=False, target="cuda", autocast=Autocast("cuda")):
        assert masking._ignore_causal_mask_sdpa(mask, 64, 64, 0, 0) is True
        # a sliding window shorter than the sequence still needs a mask
        assert masking._ignore_causal_mask_sdpa(mask, 64, 64, 0, 0, 32) is False
    assert masking._ignore_causal_mask_sdpa.__name__ == "_ignore_causal_mask_sdpa"


def test_seven_billion_model_traces_on_the_cpu():
    # How long it takes is bench/trace_speed.py's to report (docs/memory.md), not a test's.
    config = find_model("meta-llama/Llama-2-7b-hf").config
    result = trace_memory(config, TrainingSettings(seq_len=2048), Combination("lora"))
    # bf16 weights of 6.74B parameters are 12.55 GiB; the step needs more.
    assert 13 * 2**30 < result.peak_bytes < 16 * 2**30


def test_worker_trace_command_prints_the_estimate(tmp_path, capsys):
    from memtrace.__main__ import main

    request = tmp_path / "request.json"
    request.write_text(
        json.dumps({"config": TINY, "training": {"seq_len": 64}, "variant": "dora"}),
        encoding="utf-8",
    )
    assert main(["--request", str(request)]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    estimate = answer["estimate"]
    assert estimate["method"] == "trace" and estimate["variant"] == "dora"
    assert estimate["peak_allocated_gib"] == round(answer["trace"]["peak_bytes"] / 2**30, 3)
    assert sum(estimate["breakdown"].values()) == pytest.approx(estimate["total_gib"], abs=0.01)


def test_worker_trace_command_refuses_what_the_worker_cannot_build(tmp_path, capsys):
    from memtrace.__main__ import EXIT_REFUSED, main

    request = tmp_path / "request.json"
    request.write_text(
        json.dumps({"config": {**TINY, "model_type": "t5"}, "training": {"seq_len": 64}}),
        encoding="utf-8",
    )
    assert main(["--request", str(request)]) == EXIT_REFUSED
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["field"] == "model.config.model_type"
    assert "sdpa" in answer["detail"] and "analytic" in answer["detail"]


# GPUs bitsandbytes' CUDA dispatch tells apart: (SM count, compute capability).
GPUS = {
    "V100": (80, 7, 0),
    "T4": (40, 7, 5),
    "A100": (108, 8, 0),
    "A10": (72, 8, 6),
    "RTX 3090": (82, 8, 6),
    "Jetson Orin": (16, 8, 7),
    "L4": (58, 8, 9),
    "RTX 4090": (128, 8, 9),
    "L40S": (142, 8, 9),
    "H100 PCIe": (114, 9, 0),
    "H100/H200 SXM": (132, 9, 0),
    "B200": (148, 10, 0),
    "RTX 5090": (170, 12, 0),
    "GB10": (48, 12, 1),
}


def _bitsandbytes_cuda_gemm_4bit_dispatch():
    """The installed bitsandbytes' own decision between its fused CUDA `gemm_4bit` kernel
    and `_dequant_linear_fallback`, for a GPU given by SM count and compute capability.
    `backends/cuda/ops.py` cannot be imported without CUDA, so its heuristic
    (`_gemm_4bit_use_custom_cuda`) and constants are compiled from the source file, with
    the device query replaced; the two checks of the registered kernel around it (more rows
    than `_gemm_4bit_custom_max_m`, K not a multiple of the blocksize) are restated here."""
    import ast
    import importlib.util
    from pathlib import Path

    package = importlib.util.find_spec("bitsandbytes").submodule_search_locations[0]
    tree = ast.parse((Path(package) / "backends" / "cuda" / "ops.py").read_text())
    props: list[tuple[int, int, int]] = []
    namespace = {"torch": torch, "_gpu_dispatch_props": lambda device_index: props[0]}
    nodes = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == (
            "_GEMM_4BIT_CUSTOM_FLOOR_M"
        ):
            nodes.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "torch.version.hip is None":
            nodes += [
                n for n in node.body if ast.unparse(n.targets[0]) != "_gemm_4bit_use_custom_fn"
            ]
        if isinstance(node, ast.FunctionDef) and node.name == "_gemm_4bit_use_custom_cuda":
            node.decorator_list = []  # functools.cache would key on the device index only
            nodes.append(node)
    exec(compile(ast.Module(nodes, type_ignores=[]), "bitsandbytes-cuda-ops", "exec"), namespace)
    custom, max_m = namespace["_gemm_4bit_use_custom_cuda"], namespace["_gemm_4bit_custom_max_m"]

    def fused(gpu, dtype, m, n, k, blocksize=64):
        if m > max_m or k % blocksize:
            return False
        props[:] = [GPUS[gpu]]
        return custom(0, dtype, m, n, k)

    return fused


def test_cuda_gemm_4bit_is_modelled_fused_only_where_every_gpu_runs_the_fused_kernel():
    """Where the trace models bitsandbytes' fused kernel (no dequantized weight), every GPU
    runs it; elsewhere at least one GPU dequantizes, and for the large weights of models
    from 1B up at training-sized inputs every GPU does: the conservative branch costs
    nothing there."""
    from memtrace.emulation import cuda_gemm_4bit_fused

    bnb_fused = _bitsandbytes_cuda_gemm_4bit_dispatch()
    rows = (1, 2, 4, 5, 6, 7, 8, 16, 64, 128, 256, 320, 512, 1024, 1536, 2048, 8192)
    shapes = set()
    for name in (
        "HuggingFaceTB/SmolLM2-135M",
        "meta-llama/Llama-3.2-1B",
        "mistralai/Mistral-7B-v0.1",
    ):
        c = find_model(name).config
        h, i, heads = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"]
        d = c.get("head_dim") or h // heads
        kv = c.get("num_key_value_heads", heads) * d
        shapes |= {(heads * d, h), (kv, h), (h, heads * d), (i, h), (h, i), (2 * i, h)}
    for n, k in sorted(shapes):
        for m in rows:
            for dtype in (torch.bfloat16, torch.float16):
                every = {gpu: bnb_fused(gpu, dtype, m, n, k) for gpu in GPUS}
                assert cuda_gemm_4bit_fused(m, k, 64) == all(every.values()), (m, n, k, every)
                if n * k >= 4 * 2**20 and m >= 512:
                    assert not any(every.values()), (m, n, k, every)
    # The dispatch is real: an H100 runs the fused kernel for a decode-sized input and
    # dequantizes for a 2048-token one.
    assert bnb_fused("H100/H200 SXM", torch.bfloat16, 4, 4096, 4096)
    assert not bnb_fused("H100/H200 SXM", torch.bfloat16, 2048, 4096, 4096)


def test_cuda_gemm_4bit_dequantizes_into_a_temporary_as_bitsandbytes_fallback_does():
    """A 4-bit linear over more rows than the fused kernel's floor holds, at once, the
    weight dequantized to the input's dtype, both fp32 absmax tensors of double
    quantization (`_dequant_linear_fallback` keeps `absmax_dq` until it returns) and the
    output; at the floor only the output."""
    import bitsandbytes.functional as bnbf

    from memtrace.emulation import GEMM_4BIT_FUSED_MAX_M, gemm_4bit_substitute

    n, k = 1024, 512
    weight = torch.empty(n, k, dtype=torch.bfloat16, device="meta")
    packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=True)
    substitute = gemm_4bit_substitute("cuda")
    for rows in (GEMM_4BIT_FUSED_MAX_M, GEMM_4BIT_FUSED_MAX_M + 1, 512):
        a = torch.empty(rows, k, dtype=torch.bfloat16, device="meta")
        with StorageTracker(count_device="meta") as tracker:
            out = substitute(
                a,
                packed,
                state.shape,
                state.state2.absmax,
                64,
                "nf4",
                absmax_8bit=state.absmax,
                absmax_code=state.state2.code,
                absmax_offset=state.offset,
            )
        assert out.shape == (rows, n)
        output = rows * n * 2
        if rows <= GEMM_4BIT_FUSED_MAX_M:
            assert tracker.peak_raw.bytes == output
        else:
            assert tracker.peak_raw.bytes == n * k * 2 + 2 * (n * k // 64) * 4 + output
