"""Analytic GPU memory model of one LoRA-family training step.

It models the stack loracle's worker runs, tensor by tensor: transformers'
Llama-style modules with sdpa attention, peft adapters, bitsandbytes NF4 for
QLoRA, the Trainer's autocast mixed precision, and torch optimizers. Every
term says which behaviour of which library it follows. The tracer
(``worker.memtrace``) measures the same step on meta tensors; this closed form is
what answers in microseconds; it is calibrated against the tracer over a grid of
288 configurations (docs/memory.md, tests/advisor/test_calibration_grid.py).

Units: bytes internally; the public figures are GiB (2^30 bytes).

The peak of a step (what ``torch.cuda.max_memory_allocated`` reports) is
``weights + adapter + optimizer state + gradients + activations at their
peak``. ``total`` adds the CUDA context and the caching allocator's slack: what
the card must have free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from advisor.architecture import Architecture, Linear
from advisor.profile import TrainingSettings
from advisor.variants import Combination

GIB = 1 << 30

# -- constants and where they come from ---------------------------------------------

# NF4 with double quantization (Dettmers et al. 2023, QLoRA, section 3 "Double
# Quantization"; bitsandbytes Params4bit with blocksize 64, compress_statistics
# True): 4 bits per weight, one 8-bit absmax per 64 weights, one fp32 constant
# per 256 of those blocks. 4 + 8/64 + 32/(64*256) = 4.127 bits per parameter.
NF4_DQ_BYTES_PER_PARAM = (4 + 8 / 64 + 32 / (64 * 256)) / 8

# AdamW keeps exp_avg and exp_avg_sq in fp32 (torch.optim.AdamW): 8 bytes per
# trainable parameter. bitsandbytes' 8-bit Adam keeps both states in 8 bits
# (Dettmers et al. 2022, 8-bit Optimizers via Block-wise Quantization): 2 bytes.
# SGD without momentum (the Trainer's "sgd") keeps no state.
OPTIMIZER_STATE_BYTES = {"adamw": 8.0, "adamw_8bit": 2.0, "paged_adamw_8bit": 2.0, "sgd": 0.0}

# Allocation outside tensors. The CUDA context with cuBLAS/cuDNN handles and
# the cuBLAS workspace is 0.4-0.6 GiB on Ampere/Hopper cards with torch 2.x
# (PyTorch "CUDA semantics: memory management" notes; measured as nvidia-smi
# usage minus torch.cuda.memory_reserved). The caching allocator rounds blocks
# and keeps freed ones: reserved exceeds the peak allocated by a few percent in
# steady-state training. ALLOCATOR_SLACK is fitted, not measured by us: the
# torchtune LoRA runs of published-memory.csv report peak reserved at 1.02-1.10x
# this model's peak allocated (the spread is their unstated sequence lengths,
# 512-1024 tokens); 6% is the middle. Right after model init, before any step,
# the same source shows reserved barely above allocated (13.96 vs 13.98 GB).
CUDA_CONTEXT_BYTES = int(0.5 * GIB)
ALLOCATOR_SLACK = 0.06

DEFAULT_LORA_DROPOUT = 0.05

# Eager attention (Gemma-2), bytes per attention score (one per head, token and key),
# fitted to traced steps of gemma-2-2b (tests/advisor/data/trace_grid.json): kept for
# backward per block, the soft-capping's extra, and the transients in flight.
EAGER_SCORE_BYTES = 6.0
EAGER_SOFTCAP_BYTES = 2.0
EAGER_TRANSIENT_BYTES = 4.0
# Final-logit soft-capping keeps tanh's 16-bit output: bytes per token and vocabulary entry.
SOFTCAP_LOGIT_BYTES = 2.0

# peft computes DoRA's output in the adapters' dtype (fp32: it casts the layer input to
# lora_A's dtype), so a DoRA layer's backward holds fp32 tensors as wide as its output:
# the gradient of the fp32 sum and of its two products. Fitted to the tracer
# (docs/memory.md): 2.5 fp32 copies of the widest adapted output, per token, keep every
# DoRA configuration of the calibration grid within 3%, erring high.
DORA_GRAD_COPIES = 2.5


def default_lora_dropout(combo: Combination) -> float:
    """DoRA defaults to no dropout: with dropout peft cannot reuse the base layer's
    output, recomputes it from the full weight and keeps a 16-bit copy of every
    adapted weight for backward (peft ``DoraLinearLayer.forward``, base_result None)."""
    return 0.0 if combo.dora else DEFAULT_LORA_DROPOUT


Phase = Literal["forward", "backward", "optimizer"]


@dataclass(frozen=True)
class Breakdown:
    """Bytes of each kind at the moment of the peak, plus overhead beyond the peak."""

    weights: float
    adapter: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float

    @property
    def allocated(self) -> float:
        return self.weights + self.adapter + self.gradients + self.optimizer + self.activations

    def gib(self) -> dict[str, float]:
        return {k: round(v / GIB, 3) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class MemoryEstimate:
    variant: str
    combine_with: tuple[str, ...]
    method: str
    breakdown: Breakdown
    peak_phase: Phase
    reserved_bytes: float
    total_bytes: float
    trainable_params: int
    total_params: int
    gpu_count: int = 1
    assumptions: tuple[str, ...] = field(default=())

    @property
    def peak_allocated_bytes(self) -> float:
        return self.breakdown.allocated

    @property
    def peak_allocated_gib(self) -> float:
        return self.peak_allocated_bytes / GIB

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def fits(self, card_gib: float) -> bool:
        return self.total_gib <= card_gib

    def as_dict(self, card_gib: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "variant": self.variant,
            "combine_with": list(self.combine_with),
            "method": self.method,
            "peak_allocated_gib": round(self.peak_allocated_gib, 3),
            "reserved_gib": round(self.reserved_bytes / GIB, 3),
            "total_gib": round(self.total_gib, 3),
            "peak_phase": self.peak_phase,
            "breakdown": self.breakdown.gib(),
            "trainable_params": self.trainable_params,
            "trainable_percent": round(100 * self.trainable_params / self.total_params, 4),
            "gpu_count": self.gpu_count,
            "assumptions": list(self.assumptions),
            "fits": None,
            "headroom_gib": None,
        }
        if card_gib is not None:
            out["fits"] = self.fits(card_gib)
            out["headroom_gib"] = round(card_gib - self.total_gib, 3)
        return out


# -- the model ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dtypes:
    compute: int  # bytes of the compute dtype (autocast target, or fp32)
    weight: int  # bytes of unquantized frozen weights as loaded
    residual: int  # bytes of the residual stream between blocks
    autocast: bool


def _dtypes(t: TrainingSettings) -> _Dtypes:
    fp32 = t.precision == "fp32"
    # QLoRA too: the worker runs peft.prepare_model_for_kbit_training (freezing,
    # input gradients, checkpointing) and then returns every non-4-bit weight it
    # upcast to fp32 back to the compute dtype. Left in fp32, a 128k-vocabulary
    # embedding costs 2 GiB more on Llama-3-8B, and fp32 norm weights promote the
    # residual stream and the MLP to fp32 (bitsandbytes' Linear4bit answers in its
    # input's dtype), which makes QLoRA's activations larger than LoRA's.
    width = 4 if fp32 else 2
    return _Dtypes(compute=width, weight=width, residual=width, autocast=not fp32)


def _weights(arch: Architecture, d: _Dtypes, combo: Combination) -> float:
    if combo.quantize_base:
        return (
            arch.block_linear_weight_params * NF4_DQ_BYTES_PER_PARAM
            + arch.unquantized_params * d.weight
        )
    return float(arch.total_params * d.weight)


def _lora_saved_per_token(lin: Linear, rank: int, d: _Dtypes, dropout: bool) -> float:
    """What one adapted linear keeps for backward, per token.

    peft casts the input to the adapter's dtype (fp32: adapters are upcast by
    ``autocast_adapter_dtype``), dropout keeps its bool mask, and lora_A under
    autocast saves the 16-bit copy of its input to form A's gradient; lora_B
    saves A's r-wide output."""
    adapter_in = d.compute if d.autocast else 4
    mask = 1 if dropout else 0
    return lin.in_features * (adapter_in + mask) + rank * adapter_in


def _dora_saved_per_token(lin: Linear, d: _Dtypes) -> float:
    """DoRA's output is (m/||W + sBA|| - 1) * base + m/||.|| * lora * s: both the base
    result and the LoRA result are kept for the magnitude's gradient (peft
    ``DoraLinearLayer.forward``)."""
    return lin.out_features * 2 * d.compute


def _dora_weight_temporaries(lin: Linear, d: _Dtypes) -> float:
    """Per adapted layer, DoRA materialises B@A through an identity matrix (in x in),
    the weight in the input's dtype, W + s*BA, and its row norms (peft
    ``get_lora_weight`` / ``get_weight_norm``): transient, a few weight-sized fp32
    tensors at once."""
    return lin.in_features**2 * 4 + 3 * lin.weight_numel * 4


def estimate(
    arch: Architecture,
    training: TrainingSettings,
    combo: Combination,
    *,
    lora_dropout: float | None = None,
    gpu_count: int = 1,
) -> MemoryEstimate:
    """Peak memory of one training step (the second: optimizer state exists)."""
    t = training
    d = _dtypes(t)
    dropout = default_lora_dropout(combo) if lora_dropout is None else lora_dropout
    has_dropout = dropout > 0
    h, i, L, V = arch.hidden_size, arch.intermediate_size, arch.num_hidden_layers, arch.vocab_size
    tokens = t.seq_len * t.micro_batch_size
    targets = arch.resolve_targets(t.target_modules)
    assumptions: list[str] = list(arch.notes)

    # -- persistent state --
    weights = _weights(arch, d, combo)
    trainable = arch.lora_params(t.lora_rank, t.target_modules, dora=combo.dora)
    adapter = trainable * 4.0  # fp32: peft get_peft_model(autocast_adapter_dtype=True)
    gradients = trainable * 4.0
    optimizer = trainable * OPTIMIZER_STATE_BYTES[t.optimizer]

    # -- what one block keeps for backward, per token --
    padded = t.micro_batch_size > 1
    gqa = arch.num_key_value_heads != arch.num_attention_heads
    # transformers' sdpa path passes GQA to the kernel only without an attention
    # mask; a padded batch carries a mask and k/v are repeated to all heads.
    kv_saved = arch.q_dim if (gqa and padded) else arch.kv_dim
    norm = 4 * h + 4  # RMSNorm upcasts to fp32 and keeps it plus rsqrt (LlamaRMSNorm)
    per_layer: float = arch.norms_per_layer * norm
    if arch.qk_norm:
        per_layer += 4 * (arch.q_dim + arch.kv_dim)
    eager = arch.attention == "eager"
    nh = arch.num_attention_heads
    if eager:
        # transformers' eager_attention_forward: k and v repeated to every head, and per
        # head and token a row of s scores kept for backward: tanh soft-capping's output
        # (16-bit), softmax's fp32 output and its 16-bit copy for the value matmul.
        score_bytes = EAGER_SCORE_BYTES + (
            EAGER_SOFTCAP_BYTES if arch.attn_logit_softcapping else 0
        )
        per_layer += d.compute * 4 * arch.q_dim + score_bytes * nh * t.seq_len
    else:
        # flash / memory-efficient sdpa on CUDA keep q, k, v, the output and a
        # per-head fp32 logsumexp; no s x s scores (what a CUDA run uses).
        per_layer += d.compute * (2 * arch.q_dim + 2 * kv_saved) + 4 * nh
    if arch.fused and not (gqa and padded):
        # A fused qkv_proj (Phi-3): the value states attention keeps are a view of the
        # fused output, so its query and key columns stay alive with them (the rotated
        # q and k are tensors of their own). Found by the tracer against the real Trainer;
        # 192 MiB a block for Phi-3-mini at 512 tokens. Where k and v are repeated to
        # every head (GQA with a padded batch), the kept v is a copy and frees it.
        per_layer += d.compute * (arch.q_dim + arch.kv_dim)
    # Gated MLP: SiLU keeps gate's output, the product keeps silu(gate) and up.
    per_layer += 3 * d.residual * i
    dora_weight_saved = 0.0
    dora_temp = 0.0
    for lin in targets:
        per_layer += _lora_saved_per_token(lin, t.lora_rank, d, has_dropout)
        if combo.dora:
            per_layer += _dora_saved_per_token(lin, d)
            dora_temp = max(dora_temp, _dora_weight_temporaries(lin, d))
            if has_dropout:
                # base output recomputed as F.linear(dropout(x), W): autocast keeps
                # the 16-bit copy of W for the input gradient.
                dora_weight_saved += lin.weight_numel * d.compute
    # Transients while a block runs forward or backward: the MLP's pre-sum
    # outputs and input gradients (i-wide) and the hidden-state gradients.
    transient: float = tokens * (3 * d.compute * i + 2 * 4 * h)
    if combo.dora:
        # ... or a DoRA layer's fp32 output gradients (fused layers such as Phi-3's
        # gate_up_proj make these the widest tensors of a block).
        widest = max(lin.out_features for lin in targets)
        transient = max(transient, tokens * (DORA_GRAD_COPIES * 4 * widest + 2 * 4 * h))
    if combo.quantize_base:
        # bitsandbytes dequantizes each 4-bit weight to the compute dtype for the
        # matmul, forward and backward (MatMul4Bit); one lives at a time.
        transient += max(lin.weight_numel for lin in arch.block_linears()) * d.compute
    transient += dora_temp
    if eager:
        # the scores' matmul output and the soft-capped copies in flight
        transient += tokens * nh * t.seq_len * EAGER_TRANSIENT_BYTES

    # -- logits: the fp32 cross-entropy of transformers' ForCausalLMLoss --
    # forward: bf16 logits, their fp32 upcast, log_softmax output (kept);
    # backward start: kept output, its gradient, and the input gradient: 12 B/token/vocab.
    logits_bytes_per_token: float = 12 * V
    if arch.final_logit_softcapping:
        # Gemma-2 soft-caps the 16-bit logits with tanh, whose output is kept
        logits_bytes_per_token += SOFTCAP_LOGIT_BYTES * V
    logits: float = tokens * logits_bytes_per_token + tokens * (4 * h + 4)  # + final norm
    # A padded micro batch: transformers builds one (batch, 1, s, s) bool mask for all
    # blocks, and each block's memory-efficient attention turns it into an additive mask in
    # the compute dtype (attention.cpp `convert_boolean_attn_mask`) that it keeps for
    # backward: 1 GiB over SmolLM2's 30 blocks at 4 x 2048 tokens, which this model missed.
    mask: float = tokens * t.seq_len if padded else 0
    if eager:
        mask = tokens * t.seq_len * d.compute  # eager always adds a float (b, 1, s, s) mask
    per_layer_saved = tokens * per_layer + dora_weight_saved
    if padded and not eager:
        per_layer_saved += tokens * t.seq_len * d.compute
    layer_input = tokens * d.residual * h  # what a checkpointed block keeps of its forward

    # Moments the step can peak at, as (activations, gradients alive). Backward runs the
    # loss first, then the blocks from last to first. Until it reaches the blocks only the
    # gradients of earlier micro batches exist (the Trainer zeroes them to None after each
    # optimizer step); at the first block it has made them all. Counting every gradient at
    # the loss's backward (as this model once did) overestimated short-sequence steps by up
    # to 4% against the tracer.
    earlier_grads = gradients if t.gradient_accumulation_steps > 1 else 0.0
    if t.gradient_checkpointing:
        # transformers checkpoints each decoder layer (non-reentrant): only its
        # input survives the forward; backward recomputes one layer at a time.
        kept: float = L * layer_input + mask
        layer_peak = per_layer_saved + transient
    else:
        kept = L * per_layer_saved + mask
        layer_peak = transient
    moments = [
        (kept + logits, earlier_grads, logits),  # the loss's backward (fp32 logits)
        (kept + layer_peak, earlier_grads, 0.0),  # the last block, backward's first
        (layer_input + per_layer_saved + transient + mask, gradients, 0.0),  # the first block
    ]
    activations, grads_at_peak, logits_at_peak = max(moments, key=lambda m: m[0] + m[1])
    phase: Phase = "backward"
    step_peak = weights + adapter + optimizer + activations + grads_at_peak
    # The optimizer step: torch's foreach AdamW holds about one parameter-sized temporary.
    opt_peak = weights + adapter + optimizer + gradients + trainable * 4.0
    if opt_peak > step_peak:
        phase = "optimizer"
        activations, grads_at_peak, logits_at_peak = trainable * 4.0, gradients, 0.0
    gradients = grads_at_peak

    if gpu_count > 1:
        # Layer-wise model parallelism: blocks (their weights, adapters, state and
        # activations) spread over the cards; the logits stay on the last card.
        share = 1.0 / gpu_count
        weights, adapter, gradients, optimizer = (
            weights * share,
            adapter * share,
            gradients * share,
            optimizer * share,
        )
        activations = (activations - logits_at_peak) * share + logits_at_peak
        assumptions.append(
            f"split over {gpu_count} cards layer by layer (device_map='auto'); figures per card"
        )

    allocated = weights + adapter + gradients + optimizer + activations
    reserved = allocated * (1 + ALLOCATOR_SLACK)
    total = reserved + CUDA_CONTEXT_BYTES
    assumptions.append(f"lora_dropout {dropout:g}")
    if t.seq_len > (arch.max_position_embeddings or t.seq_len):
        assumptions.append(
            f"seq_len {t.seq_len} exceeds the model's max_position_embeddings "
            f"{arch.max_position_embeddings}"
        )
    return MemoryEstimate(
        variant=combo.variant,
        combine_with=combo.combine_with,
        method="analytic",
        breakdown=Breakdown(
            weights=weights,
            adapter=adapter,
            gradients=gradients,
            optimizer=optimizer,
            activations=activations,
            overhead=total - allocated,
        ),
        peak_phase=phase,
        reserved_bytes=reserved,
        total_bytes=total,
        trainable_params=trainable,
        total_params=arch.total_params,
        gpu_count=gpu_count,
        assumptions=tuple(assumptions),
    )


def weights_only_bytes(
    arch: Architecture, quantized: bool, double_quant: bool = True, rest_bytes: int = 2
) -> float:
    """Weights without training state: 16-bit, or NF4 block linears (with or without
    double quantization) plus the rest (embeddings, head, norms, biases) at
    ``rest_bytes``: 2 as loaded for inference, 4 once
    prepare_model_for_kbit_training has upcast them for training."""
    if not quantized:
        return float(arch.total_params * 2)
    per_param = NF4_DQ_BYTES_PER_PARAM if double_quant else (4 + 32 / 64) / 8
    return arch.block_linear_weight_params * per_param + arch.unquantized_params * rest_bytes
