"""Analytic GPU memory model of one LoRA-family training step.

It models the stack loracle's worker runs, tensor by tensor: transformers'
Llama-style modules with sdpa attention, peft adapters, bitsandbytes NF4 for
QLoRA, the Trainer's autocast mixed precision, and torch optimizers. Every
term says which behaviour of which library it follows. The tracer
(``memtrace``) measures the same step on meta tensors; this closed form is
what answers in microseconds; it is calibrated against the tracer over a grid of
288 configurations (docs/memory.md, tests/advisor/test_calibration_grid.py).

Units: bytes internally; the public figures are GiB (2^30 bytes).

The peak of a step (what ``torch.cuda.max_memory_allocated`` reports) is
``weights + adapter + optimizer state + gradients + activations at their
peak``, at the longest padded batch (``seq_len`` is the cap). ``reserved`` is what
PyTorch's caching allocator holds at the highest point of the whole run (the model load,
every training step, an evaluation pass), under the allocator setting the worker runs
with; ``total`` adds what lives outside the allocator (the CUDA context): what the card
must have free for the whole run. "fits" asks for ``total x (1 + margin)``.

``estimate`` assembles these from named terms, and the functions after it define the
terms in the order it uses them: the byte widths the precision sets, what lives for the
whole step (frozen weights, adapter, gradients, optimizer state), the activations of a
micro batch (what a block keeps for backward, what is in flight while it runs, the
shared mask, the logits), the moments the step can peak at, and then the whole run
(``whole_run``: the load, the evaluation pass, and what the allocator reserves around
each phase's tensors), which the tracer shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

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

# Adapters train in fp32 whatever the compute dtype: peft's get_peft_model upcasts them
# (autocast_adapter_dtype=True), and their gradients take their dtype.
ADAPTER_BYTES_PER_PARAM = 4.0
GRADIENT_BYTES_PER_PARAM = 4.0

# AdamW keeps exp_avg and exp_avg_sq in fp32 (torch.optim.AdamW): 8 bytes per
# trainable parameter. bitsandbytes' 8-bit Adam keeps both states in 8 bits
# (Dettmers et al. 2022, 8-bit Optimizers via Block-wise Quantization): 2 bytes.
# SGD without momentum (the Trainer's "sgd") keeps no state.
OPTIMIZER_STATE_BYTES = {"adamw": 8.0, "adamw_8bit": 2.0, "paged_adamw_8bit": 2.0, "sgd": 0.0}
# The optimizer step: torch's foreach AdamW holds about one parameter-sized fp32
# temporary, bytes per trainable parameter (counted for every optimizer).
OPTIMIZER_STEP_TEMPORARY_BYTES = 4.0

# Memory outside the caching allocator: the CUDA context with its cuBLAS/cuDNN handles,
# 0.4-0.6 GiB on Ampere/Hopper cards with torch 2.x (PyTorch "CUDA semantics: memory
# management" notes: nvidia-smi shows it on top of torch.cuda.memory_reserved).
CUDA_CONTEXT_BYTES = int(0.5 * GIB)
# A job on several cards (the worker's torchrun ranks, one per card): NCCL's communicator
# buffers, allocated by NCCL outside PyTorch's caching allocator like the context:
# NCCL_BUFFSIZE (4 MiB) per channel for each direction of each ring/tree link, with up to
# 32 channels on NVLink, which is 256 MiB at most for the rings of one machine.
NCCL_BUFFER_BYTES = int(0.25 * GIB)

# -- the caching allocator (what `reserved` adds to the tensors) ------------------------
#
# Facts of PyTorch's CUDA caching allocator, c10/cuda/CUDACachingAllocator.cpp
# (pytorch/pytorch@001074d2), and its documentation, docs/source/notes/cuda.rst,
# "Optimizing memory usage with PYTORCH_CUDA_ALLOC_CONF" (pytorch/pytorch@68e217b9):
# every request is rounded up to 512 bytes (kMinBlockSize); requests up to 1 MiB
# (kSmallSize) come from a small pool of 2 MiB segments (kSmallBuffer); on a cache miss a
# request of 1-10 MiB gets a 20 MiB segment (kLargeBuffer) and one of 10 MiB
# (kMinLargeAlloc) or more a segment of its own size rounded up to 2 MiB (kRoundLarge).
# A cached block is split only when the rest is over 1 MiB; segments are never merged.
MIN_BLOCK_BYTES = 512
SMALL_REQUEST_BYTES = 1 << 20
SMALL_SEGMENT_BYTES = 2 << 20
LARGE_SEGMENT_BYTES = 20 << 20
MIN_LARGE_ALLOC_BYTES = 10 << 20
LARGE_ROUND_BYTES = 2 << 20
# With expandable segments each pool is one segment that grows by mapping pages, "2MiB pages
# for our small pool and 20MiB pages for our large pool" (Note [Expandable Segments], same
# file), and a block is split at any remainder of 512 bytes or more.
EXPANDABLE_SMALL_PAGE_BYTES = 2 << 20
EXPANDABLE_LARGE_PAGE_BYTES = 20 << 20

# The allocator setting the worker trains with (it sets PYTORCH_CUDA_ALLOC_CONF to this before
# CUDA initialises; bench/gpu_memory_check.py measures under it). Why this one: the PyTorch
# docs (notes/cuda.rst, pytorch/pytorch@68e217b9, `expandable_segments`) describe what padded
# batches of varying length do to the default allocator: "if it runs at size N + 1, then it
# will have to make new allocations that are slightly larger [...] leaving unusable free
# slices of memory at the end of these segments [...] this pattern might repeat 50+ times";
# expandable segments let one segment grow instead, so a longer batch reuses what a shorter
# one freed, and PyTorch's own out-of-memory message recommends it for fragmentation.
# garbage_collection_threshold acts only with a per-process memory fraction (the GC runs
# `if (set_fraction && ...)`), max_split_size_mb is "a last resort" (the docs): neither is set.
WORKER_ALLOCATOR_CONF = "expandable_segments:True"

Allocator = Literal["expandable_segments", "default"]
WORKER_ALLOCATOR: Allocator = "expandable_segments"

# Fragmentation across shapes under the default allocator: the slivers the docs describe are
# cut from segments the size of earlier, shorter batches' tensors, so they grow with the part
# of the peak that changes with the batch's padded length (activations, logits, temporaries),
# not with the weights. The fraction is fitted, not derived: it is the smallest (to 0.01) that
# puts this model's reserved peak at or above each whole-run max_memory_reserved of
# huggingface/peft's MetaMathQA runs (default allocator, padded batches of varying length,
# 5000 steps; advisor/data/published-runs.csv, docs/memory.md), whose longest padded batch we
# take at their 768-token cap.
DEFAULT_FRAGMENTATION = 0.14

# cuBLAS workspaces go through the caching allocator and stay for the whole run, one per
# (handle, stream) that runs a cuBLAS kernel (PyTorch docs, notes/cuda.rst "cuBLAS
# workspaces"): the default CUBLAS_WORKSPACE_CONFIG=:4096:2:16:8 is 2 x 4096 KiB + 8 x 16 KiB.
# A training step has two handles: the Python thread's forward and autograd's device thread's
# backward.
CUBLAS_WORKSPACE_BYTES = 2 * 4096 * 1024 + 8 * 16 * 1024
CUBLAS_HANDLES = 2

# "fits" asks for total x (1 + margin). The margin is two standard deviations of this model's
# error against the published whole-run reserved peaks (advisor/calibration.py derives it from
# the table; a test holds this constant to it), rounded up to a whole percent. A card with
# enough measured jobs will replace it with its own (`FitMargin.measured`).
FIT_MARGIN = 0.10

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


Phase = Literal["forward", "backward", "optimizer"]
# How a job on several cards shares them (the worker runs the same: worker/distributed.py).
Strategy = Literal["ddp", "fsdp"]


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
class FitMargin:
    """The fraction of ``total`` a card must have free beyond it for "fits", and where it
    comes from: the published table (the default), or a card's own measured jobs."""

    fraction: float
    source: str

    @classmethod
    def measured(cls, card: str, jobs: int, fraction: float) -> FitMargin:
        """The entry point for per-card calibration: once a card has enough jobs measured
        against their estimates, the spread of those errors replaces the published one."""
        if jobs < 1 or fraction < 0:
            raise ValueError("a measured margin needs at least one job and a fraction >= 0")
        return cls(fraction, f"{jobs} measured jobs on {card}")


PUBLISHED_MARGIN = FitMargin(
    FIT_MARGIN,
    "published table: two standard deviations of the estimate's error against published "
    "whole-run reserved peaks (docs/memory.md)",
)


def card_fit(total_gib: float, margin: float, card_gib: float) -> tuple[bool, float]:
    """Whether a job needing `total_gib` fits a card of `card_gib` with the fit margin, and
    the headroom left beyond the total and its margin (negative: short by that much)."""
    headroom = card_gib - total_gib * (1 + margin)
    return headroom >= 0, headroom


@dataclass(frozen=True)
class RunPhase:
    """One phase of a job, at its highest point: the bytes its tensors hold, and what the
    allocator reserves around them (rounding of blocks to segments or pages, and either the
    holes a block's freed temporaries leave or, under the default allocator, the slivers
    batches of other lengths left)."""

    name: Literal["load", "training", "evaluation"]
    allocated: float
    rounding: float
    fragmentation: float

    @property
    def reserved(self) -> float:
        return self.allocated + self.rounding + self.fragmentation


@dataclass(frozen=True)
class WholeRun:
    """What the allocator reserves over a whole job, and what the card must have free."""

    allocator: Allocator
    phases: tuple[RunPhase, ...]
    cublas_workspaces: float
    cuda_context: float

    @property
    def highest(self) -> RunPhase:
        return max(self.phases, key=lambda phase: phase.reserved)

    @property
    def reserved(self) -> float:
        """The whole-run max_memory_reserved: the highest phase, and the cuBLAS workspaces
        that stay from the first matmul on."""
        return self.highest.reserved + self.cublas_workspaces

    @property
    def total(self) -> float:
        return self.reserved + self.cuda_context

    def gib(self) -> dict[str, Any]:
        high = self.highest
        out: dict[str, Any] = {"allocator": self.allocator, "reserved_by": high.name}
        out["evaluation_allocated"] = out["evaluation_reserved"] = None  # without a validation set
        for phase in self.phases:
            out[f"{phase.name}_allocated"] = round(phase.allocated / GIB, 3)
            out[f"{phase.name}_reserved"] = round(phase.reserved / GIB, 3)
        out["rounding"] = round(high.rounding / GIB, 3)
        out["fragmentation"] = round(high.fragmentation / GIB, 3)
        out["cublas_workspaces"] = round(self.cublas_workspaces / GIB, 3)
        out["cuda_context"] = round(self.cuda_context / GIB, 3)
        return out


@dataclass(frozen=True)
class MemoryEstimate:
    variant: str
    combine_with: tuple[str, ...]
    method: str
    breakdown: Breakdown
    peak_phase: Phase
    run: WholeRun
    trainable_params: int
    total_params: int
    gpu_count: int = 1
    assumptions: tuple[str, ...] = field(default=())
    margin: FitMargin = PUBLISHED_MARGIN
    strategy: Strategy | None = None

    @property
    def peak_allocated_bytes(self) -> float:
        return self.breakdown.allocated

    @property
    def peak_allocated_gib(self) -> float:
        return self.peak_allocated_bytes / GIB

    @property
    def reserved_bytes(self) -> float:
        return self.run.reserved

    @property
    def total_bytes(self) -> float:
        return self.run.total

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def fits(self, card_gib: float) -> bool:
        return card_fit(self.total_gib, self.margin.fraction, card_gib)[0]

    def headroom_gib(self, card_gib: float) -> float:
        """What the card has beyond the total and its margin (negative: short by that)."""
        return card_fit(self.total_gib, self.margin.fraction, card_gib)[1]

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
            "whole_run": self.run.gib(),
            "margin": self.margin.fraction,
            "margin_source": self.margin.source,
            "trainable_params": self.trainable_params,
            "trainable_percent": round(100 * self.trainable_params / self.total_params, 4),
            "gpu_count": self.gpu_count,
            "strategy": self.strategy,
            "assumptions": list(self.assumptions),
            "fits": None,
            "headroom_gib": None,
        }
        if card_gib is not None:
            out["fits"] = self.fits(card_gib)
            out["headroom_gib"] = round(self.headroom_gib(card_gib), 3)
        return out


# -- the estimate, assembled from its terms -------------------------------------------


def estimate(
    arch: Architecture,
    training: TrainingSettings,
    combo: Combination,
    *,
    lora_dropout: float | None = None,
    gpu_count: int = 1,
    allocator: Allocator = WORKER_ALLOCATOR,
    evaluation: bool = False,
    margin: FitMargin | None = None,
    strategy: Strategy | None = None,
) -> MemoryEstimate:
    """Peak memory of one training step (the second: optimizer state exists) at the
    longest padded batch, and what the whole job reserves and needs (`whole_run`).

    `gpu_count` > 1: figures per card of the run the worker starts, one rank per card,
    with `strategy` (default `ddp`; `multi_card_estimate` chooses like the worker does):
    `ddp`, each card holds everything one card would, plus DDP's gradient buckets and
    NCCL's buffers; `fsdp`, weights, adapters, gradients and optimizer state sharded over
    the cards, plus what is gathered while a unit runs (the root unit's embedding and head,
    two decoder blocks: the one running and the one prefetched) and the unsharded gradients
    of one block before their reduce-scatter. Activations are per card in both: each card
    trains on its own micro batch.

    `allocator`: the caching allocator's setting, the worker's by default; "default" to
    compare with runs measured under PyTorch's default. `evaluation`: the job has a
    validation set (the Trainer's no-grad evaluation pass). `margin`: the fit margin, the
    published one by default (a card's measured margin, when it has one)."""
    widths = _byte_widths(training)
    dropout = combo.lora_dropout if lora_dropout is None else lora_dropout
    assumptions: list[str] = list(arch.notes)

    # What lives for the whole step.
    weights = _frozen_weights(arch, widths, combo)
    trainable_params = arch.lora_params(
        training.lora_rank, training.target_modules, dora=combo.dora
    )
    adapter = trainable_params * ADAPTER_BYTES_PER_PARAM
    all_gradients = trainable_params * GRADIENT_BYTES_PER_PARAM
    optimizer_state = trainable_params * OPTIMIZER_STATE_BYTES[training.optimizer]

    # What the forward pass leaves for backward, and what is in flight on the way.
    activation_terms = _activation_terms(arch, training, combo, widths, has_dropout=dropout > 0)

    # When the step peaks: in backward (at the loss or at a block), or in the optimizer step.
    backward = _backward_peak(activation_terms, all_gradients, training, arch.num_hidden_layers)
    optimizer_step = _Moment(trainable_params * OPTIMIZER_STEP_TEMPORARY_BYTES, all_gradients, 0.0)
    persistent = weights + adapter + optimizer_state
    phase: Phase = "backward"
    peak = backward
    if (
        persistent + optimizer_step.gradients + optimizer_step.activations
        > persistent + backward.activations + backward.gradients
    ):
        phase, peak = "optimizer", optimizer_step
    step_activations, gradients = peak.activations, peak.gradients

    if gpu_count <= 1:
        strategy = None
    elif (strategy or "ddp") == "ddp":
        strategy = "ddp"
        # DistributedDataParallel's reducer copies the gradients into its buckets for the
        # all-reduce (gradient_as_bucket_view is off in the Trainer): one more copy of the
        # trainable gradients, for the whole run.
        gradients += all_gradients
        assumptions.append(
            f"DDP over {gpu_count} cards (torchrun, one rank per card): each card holds the "
            "whole model, its adapters, gradients plus DDP's gradient buckets, optimizer "
            "state and its own micro batch's activations; NCCL buffers outside the "
            "allocator; figures per card"
        )
    else:
        share = 1.0 / gpu_count
        gathered = _fsdp_gathered(arch, widths, combo)
        weights = weights * share + gathered * (1 - share)
        adapter, optimizer_state = adapter * share, optimizer_state * share
        # A block's adapter gradients exist whole until their reduce-scatter.
        gradients = gradients * share + all_gradients / arch.num_hidden_layers
        assumptions.append(
            f"FSDP over {gpu_count} cards (torchrun, one rank per card, each decoder block "
            "a unit; FSDP-QLoRA stores 4-bit weights in the compute dtype): weights, "
            f"adapters, gradients and optimizer state sharded {gpu_count} ways, plus the "
            "gathered embedding, head and two blocks (running and prefetched) and one "
            "block's unsharded gradients; its own micro batch's activations; NCCL buffers "
            "outside the allocator; figures per card"
        )

    # What the card must have free for the whole job: the step, the load, an evaluation.
    allocated = weights + adapter + gradients + optimizer_state + step_activations
    run = whole_run(
        arch,
        training,
        combo,
        StepPeak(allocated, step_activations),
        allocator=allocator,
        evaluation=evaluation,
        gpu_count=gpu_count,
        lora_dropout=dropout,
        strategy=strategy,
    )

    assumptions.append(f"lora_dropout {dropout:g}")
    if training.seq_len > (arch.max_position_embeddings or training.seq_len):
        assumptions.append(
            f"seq_len {training.seq_len} exceeds the model's max_position_embeddings "
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
            optimizer=optimizer_state,
            activations=step_activations,
            overhead=run.total - allocated,
        ),
        peak_phase=phase,
        run=run,
        trainable_params=trainable_params,
        total_params=arch.total_params,
        gpu_count=gpu_count,
        assumptions=tuple(assumptions + run_assumptions(run)),
        margin=margin or PUBLISHED_MARGIN,
        strategy=strategy,
    )


def multi_card_estimate(
    arch: Architecture,
    training: TrainingSettings,
    combo: Combination,
    gpu_count: int,
    card_gib: float | None,
    **options: Any,
) -> MemoryEstimate:
    """The estimate of the run the worker starts on `gpu_count` cards of `card_gib`: DDP
    when one card holds the whole run (with DDP's own extra memory), else FSDP; one card:
    the plain estimate. An unknown card (`card_gib` None) gets DDP. `options`: those of
    `estimate`. The choice is the estimate's `strategy`, which placement records and the
    worker runs."""
    if gpu_count <= 1:
        return estimate(arch, training, combo, gpu_count=1, **options)
    ddp = estimate(arch, training, combo, gpu_count=gpu_count, strategy="ddp", **options)
    if card_gib is None or ddp.fits(card_gib):
        return ddp
    return estimate(arch, training, combo, gpu_count=gpu_count, strategy="fsdp", **options)


def _fsdp_gathered(arch: Architecture, widths: _ByteWidths, combo: Combination) -> float:
    """What FSDP holds whole on each card beyond its shards: the root unit (embedding, head
    and final norm: gathered for the whole forward and backward) and two decoder blocks
    (the one running and the one prefetched)."""
    weights = _frozen_weights(arch, widths, combo)
    root = (arch.embedding_params + arch.lm_head_params) * widths.frozen_weight
    block = max(weights - root, 0.0) / arch.num_hidden_layers
    return root + 2 * block


# -- dtypes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _ByteWidths:
    """Bytes per element of the tensors the step holds, by role."""

    compute: int  # the autocast target, or fp32 without autocast
    frozen_weight: int  # unquantized frozen weights, as the worker leaves them
    residual_stream: int  # the hidden states passed between blocks


def _byte_widths(training: TrainingSettings) -> _ByteWidths:
    # QLoRA too: the worker runs peft.prepare_model_for_kbit_training (freezing,
    # input gradients, checkpointing) and then returns every non-4-bit weight it
    # upcast to fp32 back to the compute dtype. Left in fp32, a 128k-vocabulary
    # embedding costs 2 GiB more on Llama-3-8B, and fp32 norm weights promote the
    # residual stream and the MLP to fp32 (bitsandbytes' Linear4bit answers in its
    # input's dtype), which makes QLoRA's activations larger than LoRA's.
    width = 4 if training.precision == "fp32" else 2
    return _ByteWidths(compute=width, frozen_weight=width, residual_stream=width)


# -- what lives for the whole step ----------------------------------------------------


def _frozen_weights(arch: Architecture, widths: _ByteWidths, combo: Combination) -> float:
    if combo.quantize_base:
        return weights_only_bytes(arch, quantized=True, rest_bytes=widths.frozen_weight)
    return float(arch.total_params * widths.frozen_weight)


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


# -- activations ----------------------------------------------------------------------


@dataclass(frozen=True)
class _ActivationTerms:
    """Activation bytes of one micro batch, by where they live."""

    block_input: float  # the input of one block: all a checkpointed block keeps of its forward
    block_saved: float  # what one block keeps for backward
    block_transients: float  # what is in flight while one block runs forward or backward
    shared_mask: float  # the attention mask all blocks share
    logits: float  # the loss's fp32 logits and their gradients, at backward's start


def _activation_terms(
    arch: Architecture,
    training: TrainingSettings,
    combo: Combination,
    widths: _ByteWidths,
    *,
    has_dropout: bool,
) -> _ActivationTerms:
    tokens_per_micro_batch = training.seq_len * training.micro_batch_size
    targets = arch.resolve_targets(training.target_modules)
    # A micro batch of more than one sequence is padded and carries an attention mask.
    padded = training.micro_batch_size > 1
    eager = arch.attention == "eager"

    saved_per_token = (
        _norms_saved_per_token(arch)
        + _attention_saved_per_token(arch, widths, training.seq_len, padded=padded)
        + _mlp_saved_per_token(arch, widths)
        + _adapters_saved_per_token(targets, training.lora_rank, widths, combo, has_dropout)
    )
    block_saved = tokens_per_micro_batch * saved_per_token + _dora_weight_copies(
        targets, widths, combo, has_dropout
    )
    if padded and not eager:
        # A padded micro batch: transformers builds one (batch, 1, s, s) bool mask for all
        # blocks, and each block's memory-efficient attention turns it into an additive mask
        # in the compute dtype (attention.cpp `convert_boolean_attn_mask`) that it keeps for
        # backward: 1 GiB over SmolLM2's 30 blocks at 4 x 2048 tokens, which this model
        # missed.
        block_saved += tokens_per_micro_batch * training.seq_len * widths.compute

    return _ActivationTerms(
        block_input=tokens_per_micro_batch * widths.residual_stream * arch.hidden_size,
        block_saved=block_saved,
        block_transients=_block_transients(
            arch, targets, combo, widths, tokens_per_micro_batch, training.seq_len
        ),
        shared_mask=_shared_attention_mask(
            arch, widths, tokens_per_micro_batch, training.seq_len, padded=padded
        ),
        logits=_logits(arch, tokens_per_micro_batch),
    )


def _rms_norm_saved_per_token(hidden_size: int) -> int:
    """RMSNorm upcasts to fp32 and keeps that copy plus the fp32 rsqrt (LlamaRMSNorm)."""
    return 4 * hidden_size + 4


def _norms_saved_per_token(arch: Architecture) -> int:
    saved = arch.norms_per_layer * _rms_norm_saved_per_token(arch.hidden_size)
    if arch.qk_norm:
        # per-head RMSNorm on q and k: the fp32 upcasts of both
        saved += 4 * (arch.q_dim + arch.kv_dim)
    return saved


def _attention_saved_per_token(
    arch: Architecture, widths: _ByteWidths, seq_len: int, *, padded: bool
) -> float:
    num_heads = arch.num_attention_heads
    grouped_query = arch.num_key_value_heads != num_heads
    # transformers' sdpa path passes GQA to the kernel only without an attention
    # mask; a padded batch carries a mask and k/v are repeated to all heads.
    kv_repeated_to_every_head = grouped_query and padded
    saved: float
    if arch.attention == "eager":
        # transformers' eager_attention_forward: k and v repeated to every head, and per
        # head and token a row of s scores kept for backward: tanh soft-capping's output
        # (16-bit), softmax's fp32 output and its 16-bit copy for the value matmul.
        score_bytes = EAGER_SCORE_BYTES + (
            EAGER_SOFTCAP_BYTES if arch.attn_logit_softcapping else 0
        )
        saved = widths.compute * 4 * arch.q_dim + score_bytes * num_heads * seq_len
    else:
        # flash / memory-efficient sdpa on CUDA keep q, k, v, the output and a
        # per-head fp32 logsumexp; no s x s scores (what a CUDA run uses).
        kv_width = arch.q_dim if kv_repeated_to_every_head else arch.kv_dim
        saved = widths.compute * (2 * arch.q_dim + 2 * kv_width) + 4 * num_heads
    if arch.fused and not kv_repeated_to_every_head:
        # A fused qkv_proj (Phi-3): the value states attention keeps are a view of the
        # fused output, so its query and key columns stay alive with them (the rotated
        # q and k are tensors of their own). Found by the tracer against the real Trainer;
        # 192 MiB a block for Phi-3-mini at 512 tokens. Where k and v are repeated to
        # every head (GQA with a padded batch), the kept v is a copy and frees it.
        saved += widths.compute * (arch.q_dim + arch.kv_dim)
    return saved


def _mlp_saved_per_token(arch: Architecture, widths: _ByteWidths) -> int:
    """Gated MLP: SiLU keeps gate's output, the product keeps silu(gate) and up."""
    return 3 * widths.residual_stream * arch.intermediate_size


def _adapters_saved_per_token(
    targets: list[Linear],
    rank: int,
    widths: _ByteWidths,
    combo: Combination,
    has_dropout: bool,
) -> int:
    saved = 0
    for lin in targets:
        saved += _lora_saved_per_token(lin, rank, widths, has_dropout)
        if combo.dora:
            saved += _dora_saved_per_token(lin, widths)
    return saved


def _lora_saved_per_token(lin: Linear, rank: int, widths: _ByteWidths, dropout: bool) -> int:
    """What one adapted linear keeps for backward, per token.

    peft casts the input to the adapter's dtype (fp32: adapters are upcast by
    ``autocast_adapter_dtype``), dropout keeps its bool mask, and lora_A saves its
    input to form A's gradient: under autocast the 16-bit copy autocast makes, in fp32
    the input itself; the compute width either way. lora_B saves A's r-wide output."""
    dropout_mask = 1 if dropout else 0
    return lin.in_features * (widths.compute + dropout_mask) + rank * widths.compute


def _dora_saved_per_token(lin: Linear, widths: _ByteWidths) -> int:
    """DoRA's output is (m/||W + sBA|| - 1) * base + m/||.|| * lora * s: both the base
    result and the LoRA result are kept for the magnitude's gradient (peft
    ``DoraLinearLayer.forward``)."""
    return lin.out_features * 2 * widths.compute


def _dora_weight_copies(
    targets: list[Linear], widths: _ByteWidths, combo: Combination, has_dropout: bool
) -> float:
    """With dropout, DoRA recomputes the base output as F.linear(dropout(x), W), and
    autocast keeps the 16-bit copy of W for the input gradient (see
    the registry's default, ``Combination.lora_dropout``)."""
    if not (combo.dora and has_dropout):
        return 0.0
    return sum((lin.weight_numel * widths.compute for lin in targets), 0.0)


def _block_transients(
    arch: Architecture,
    targets: list[Linear],
    combo: Combination,
    widths: _ByteWidths,
    tokens_per_micro_batch: int,
    seq_len: int,
) -> float:
    # The MLP's pre-sum outputs and input gradients (intermediate-wide) and the fp32
    # hidden-state gradients.
    hidden_state_gradients = 2 * 4 * arch.hidden_size
    transients: float = tokens_per_micro_batch * (
        3 * widths.compute * arch.intermediate_size + hidden_state_gradients
    )
    if combo.dora:
        # ... or a DoRA layer's fp32 output gradients (fused layers such as Phi-3's
        # gate_up_proj make these the widest tensors of a block).
        widest_output = max(lin.out_features for lin in targets)
        transients = max(
            transients,
            tokens_per_micro_batch
            * (DORA_GRAD_COPIES * 4 * widest_output + hidden_state_gradients),
        )
    if combo.quantize_base:
        # bitsandbytes dequantizes each 4-bit weight to the compute dtype for the
        # matmul, forward and backward (MatMul4Bit); one lives at a time.
        transients += max(lin.weight_numel for lin in arch.block_linears()) * widths.compute
    if combo.dora:
        transients += max(_dora_weight_temporaries(lin) for lin in targets)
    if arch.attention == "eager":
        # the scores' matmul output and the soft-capped copies in flight
        transients += (
            tokens_per_micro_batch * arch.num_attention_heads * seq_len * EAGER_TRANSIENT_BYTES
        )
    return transients


def _dora_weight_temporaries(lin: Linear) -> int:
    """Per adapted layer, DoRA materialises B@A through an identity matrix (in x in),
    the weight in the input's dtype, W + s*BA, and its row norms (peft
    ``get_lora_weight`` / ``get_weight_norm``): transient, a few weight-sized fp32
    tensors at once."""
    return lin.in_features**2 * 4 + 3 * lin.weight_numel * 4


def _shared_attention_mask(
    arch: Architecture, widths: _ByteWidths, tokens: int, seq_len: int, *, padded: bool
) -> float:
    """The (batch, 1, s, s) mask transformers builds once for all blocks."""
    if arch.attention == "eager":
        return tokens * seq_len * widths.compute  # eager always adds a float mask
    return tokens * seq_len if padded else 0  # sdpa: a bool mask, and only to pad


def _logits(arch: Architecture, tokens: int) -> float:
    """The fp32 cross-entropy of transformers' ForCausalLMLoss, and the final norm.

    forward: bf16 logits, their fp32 upcast, log_softmax output (kept); backward start:
    kept output, its gradient, and the input gradient: 12 bytes per token and vocabulary
    entry."""
    bytes_per_token: float = 12 * arch.vocab_size
    if arch.final_logit_softcapping:
        # Gemma-2 soft-caps the 16-bit logits with tanh, whose output is kept
        bytes_per_token += SOFTCAP_LOGIT_BYTES * arch.vocab_size
    return tokens * bytes_per_token + tokens * _rms_norm_saved_per_token(arch.hidden_size)


# -- when the step peaks --------------------------------------------------------------


class _Moment(NamedTuple):
    """A moment the step can peak at: activations and gradients alive, and how much of
    the activations are logits (they stay on the last card when split)."""

    activations: float
    gradients: float
    logits: float


def _backward_peak(
    terms: _ActivationTerms, all_gradients: float, training: TrainingSettings, num_layers: int
) -> _Moment:
    """Backward runs the loss first, then the blocks from last to first. Until it reaches
    the blocks only the gradients of earlier micro batches exist (the Trainer zeroes them
    to None after each optimizer step); at the first block it has made them all. Counting
    every gradient at the loss's backward (as this model once did) overestimated
    short-sequence steps by up to 4% against the tracer."""
    earlier_gradients = all_gradients if training.gradient_accumulation_steps > 1 else 0.0
    if training.gradient_checkpointing:
        # transformers checkpoints each decoder layer (non-reentrant): only its
        # input survives the forward; backward recomputes one layer at a time.
        kept_through_forward = num_layers * terms.block_input + terms.shared_mask
        one_block_backward = terms.block_saved + terms.block_transients
    else:
        kept_through_forward = num_layers * terms.block_saved + terms.shared_mask
        one_block_backward = terms.block_transients
    loss_backward = _Moment(kept_through_forward + terms.logits, earlier_gradients, terms.logits)
    last_block_backward = _Moment(kept_through_forward + one_block_backward, earlier_gradients, 0.0)
    # At the first block, what the later blocks kept is freed: its input, what it saved
    # and its transients remain, with every gradient made.
    first_block_backward = _Moment(
        terms.block_input + terms.block_saved + terms.block_transients + terms.shared_mask,
        all_gradients,
        0.0,
    )
    return max(
        (loss_backward, last_block_backward, first_block_backward),
        key=lambda moment: moment.activations + moment.gradients,
    )


# -- the whole run: load, training, evaluation, and what the allocator reserves --------


class StepPeak(NamedTuple):
    """A training step's peak, however it was found (the closed form above, or a trace):
    the bytes allocated, and how many of them change with the batch's padded length
    (activations, logits, temporaries)."""

    allocated: float
    varying: float


def whole_run(
    arch: Architecture,
    training: TrainingSettings,
    combo: Combination,
    step: StepPeak,
    *,
    allocator: Allocator = WORKER_ALLOCATOR,
    evaluation: bool = False,
    gpu_count: int = 1,
    lora_dropout: float | None = None,
    strategy: Strategy | None = None,
) -> WholeRun:
    """The job from start to end, as the worker's MemoryMonitor sees it (it starts before
    the model loads): the load, every training step (the longest padded batch is the peak
    `step`; the optimizer state exists from step 1's end, which `step` includes), and the
    Trainer's evaluation pass when there is a validation set. Reserved memory only grows
    between empty_cache calls (CUDACachingAllocator.cpp: segments are freed only by
    empty_cache or a failed cudaMalloc), so the run's max_memory_reserved is the highest
    phase's. Both methods call this: the tracer with its traced step.

    Several cards (`strategy`): under DDP every card loads and evaluates the whole model;
    under FSDP a card holds its shards and what is gathered (`_fsdp_gathered`), and NCCL's
    buffers live beside the context."""
    widths = _byte_widths(training)
    dropout = combo.lora_dropout if lora_dropout is None else lora_dropout
    share = 1.0 / gpu_count if strategy == "fsdp" else 1.0
    gathered = _fsdp_gathered(arch, widths, combo) * (1 - share) if strategy == "fsdp" else 0.0
    terms = _activation_terms(arch, training, combo, widths, has_dropout=dropout > 0)
    trainable = arch.lora_params(training.lora_rank, training.target_modules, dora=combo.dora)
    tensors = _persistent_tensors(arch, training, combo, widths)
    # A block's temporaries are freed while the tensors it keeps stay around them: the
    # holes they leave are reused by the next block's, except the last block's (derived
    # from the allocator's best fit; an upper bound: every temporary of one block).
    holes = terms.block_transients

    load_allocated, load_cached = _load(arch, widths, combo)
    phases = [
        _phase("load", load_allocated * share, load_cached * share, 0.0, tensors, allocator),
        _phase("training", step.allocated, holes, step.varying, tensors, allocator),
    ]
    if evaluation:
        persistent = _frozen_weights(arch, widths, combo) + trainable * (
            ADAPTER_BYTES_PER_PARAM + OPTIMIZER_STATE_BYTES[training.optimizer]
        )
        varying = _evaluation_activations(arch, training, widths, terms)
        phases.append(
            _phase(
                "evaluation",
                persistent * share + gathered + varying,
                holes,
                varying,
                tensors,
                allocator,
            )
        )
    return WholeRun(
        allocator=allocator,
        phases=tuple(phases),
        cublas_workspaces=CUBLAS_HANDLES * CUBLAS_WORKSPACE_BYTES,
        cuda_context=CUDA_CONTEXT_BYTES + (NCCL_BUFFER_BYTES if gpu_count > 1 else 0),
    )


def run_assumptions(run: WholeRun) -> list[str]:
    """What the answer should say about the whole run."""
    notes = [f"allocator: {run.allocator}"]
    if run.highest.name != "training":
        notes.append(
            f"the {run.highest.name} reserves more than any training step "
            f"({run.highest.reserved / GIB:.2f} GiB)"
            + (
                ": peft's prepare_model_for_kbit_training upcasts the 16-bit embeddings, head "
                "and norms to fp32 before the worker casts them back"
                if run.highest.name == "load"
                else ""
            )
        )
    return notes


def _phase(
    name: Literal["load", "training", "evaluation"],
    allocated: float,
    freed: float,
    varying: float,
    tensors: list[tuple[float, int]],
    allocator: Allocator,
) -> RunPhase:
    """A phase's reserved memory: its tensors, their rounding to blocks and segments (or
    pages), what was freed but stays reserved (holes freed temporaries leave, blocks too
    small for what came next), and under the default allocator the slivers that batches of
    other lengths left in segments cut to their sizes."""
    slivers = DEFAULT_FRAGMENTATION * varying if allocator == "default" else 0.0
    return RunPhase(
        name=name,
        allocated=allocated,
        rounding=_rounding(allocated, tensors, allocator),
        fragmentation=freed + slivers,
    )


def _load(arch: Architecture, widths: _ByteWidths, combo: Combination) -> tuple[float, float]:
    """The model load's peak: bytes allocated, and bytes freed but still reserved.

    16-bit weights load straight onto the card, one tensor at a time: the weights. QLoRA's
    load goes on: peft's prepare_model_for_kbit_training casts every parameter that is not
    4-bit (embeddings, head, norms, biases) to fp32, one at a time (`param.data =
    param.data.to(torch.float32)`, peft/utils/other.py), so at the last large one all are
    fp32 while its 16-bit copy still exists; the worker's restore_compute_dtype casts them
    back the same way. The freed 16-bit blocks stay reserved until the empty_cache peft
    calls after the casts: each is half the size of the fp32 copy that follows it, which
    cannot use it. (bitsandbytes quantizing each weight while transformers loads it holds
    one 16-bit linear weight at a time: less than this.) A run in fp32 casts nothing."""
    weights = _frozen_weights(arch, widths, combo)
    if not combo.quantize_base or widths.frozen_weight == 4:
        return weights, 0.0
    four_bit = weights - arch.unquantized_params * widths.frozen_weight
    largest = max(arch.embedding_params, arch.lm_head_params)
    allocated = four_bit + arch.unquantized_params * 4 + largest * widths.frozen_weight
    cached = (arch.unquantized_params - largest) * widths.frozen_weight
    return allocated, cached


def _evaluation_activations(
    arch: Architecture, training: TrainingSettings, widths: _ByteWidths, terms: _ActivationTerms
) -> float:
    """The Trainer's evaluation pass (no grad, loss only: `Trainer.evaluate` sets
    prediction_loss_only when there are no metrics) on micro batches of the training size
    (the worker's per_device_eval_batch_size): nothing is kept for backward; a block's input,
    output and temporaries, the shared mask, and the loss over the logits: the logits in the
    compute dtype, transformers' fp32 upcast and cross-entropy's fp32 log-softmax."""
    tokens = training.seq_len * training.micro_batch_size
    logits = tokens * arch.vocab_size * (widths.compute + 8)
    return 2 * terms.block_input + terms.block_transients + terms.shared_mask + logits


def _persistent_tensors(
    arch: Architecture, training: TrainingSettings, combo: Combination, widths: _ByteWidths
) -> list[tuple[float, int]]:
    """(bytes, how many) of every tensor that lives the whole run: frozen weights (4-bit
    packed data with its block constants, for QLoRA's block linears), and per adapted layer
    A and B with their gradients and two optimizer states."""
    out: list[tuple[float, int]] = []
    layers = arch.num_hidden_layers
    for lin in arch.block_linears():
        if combo.quantize_base:
            out.append((lin.weight_numel / 2, layers))  # two NF4 codes a byte
            out.append((lin.weight_numel / 64, layers))  # one uint8 absmax per 64 weights
        else:
            out.append((lin.weight_numel * widths.frozen_weight, layers))
        if lin.bias:
            out.append((lin.out_features * widths.frozen_weight, layers))
    norm_count = layers * arch.norms_per_layer + 1
    out.append((arch.hidden_size * widths.frozen_weight, norm_count))
    out.append((arch.embedding_params * widths.frozen_weight, 1))
    if arch.lm_head_params:
        out.append((arch.lm_head_params * widths.frozen_weight, 1))
    state_bytes = OPTIMIZER_STATE_BYTES[training.optimizer] / 2  # per state, two states
    for lin in arch.resolve_targets(training.target_modules):
        for numel in (training.lora_rank * lin.in_features, lin.out_features * training.lora_rank):
            out.append((numel * ADAPTER_BYTES_PER_PARAM, 2 * layers))  # the weight, its grad
            if state_bytes:
                out.append((numel * state_bytes, 2 * layers))
    return out


def _round_up(size: float, unit: int) -> float:
    return -(-size // unit) * unit


def _rounding(allocated: float, tensors: list[tuple[float, int]], allocator: Allocator) -> float:
    """Bytes the allocator reserves beyond the tensors' sizes: every block rounded to 512
    bytes; then, by default, the small pool's 2 MiB segments, 1-10 MiB blocks packed in
    20 MiB segments and larger ones in segments of their size rounded to 2 MiB; with
    expandable segments each pool's one segment rounded to its page (2 or 20 MiB). Counted
    for the tensors known one by one (the whole-run ones); the activations' own rounding is
    part of the default allocator's fitted slivers, and of the 20 MiB page otherwise."""
    blocks = sum(n * (_round_up(size, MIN_BLOCK_BYTES) - size) for size, n in tensors)
    small = sum(n * _round_up(s, MIN_BLOCK_BYTES) for s, n in tensors if s <= SMALL_REQUEST_BYTES)
    if allocator == "expandable_segments":
        large = max(allocated - small, 0.0)
        return (
            blocks
            + _round_up(small, EXPANDABLE_SMALL_PAGE_BYTES)
            - small
            + _round_up(large, EXPANDABLE_LARGE_PAGE_BYTES)
            - large
        )
    medium = sum(
        n * _round_up(s, MIN_BLOCK_BYTES)
        for s, n in tensors
        if SMALL_REQUEST_BYTES < s < MIN_LARGE_ALLOC_BYTES
    )
    own_segments = sum(
        n * (_round_up(s, LARGE_ROUND_BYTES) - _round_up(s, MIN_BLOCK_BYTES))
        for s, n in tensors
        if s >= MIN_LARGE_ALLOC_BYTES
    )
    return (
        blocks
        + _round_up(small, SMALL_SEGMENT_BYTES)
        - small
        + _round_up(medium, LARGE_SEGMENT_BYTES)
        - medium
        + own_segments
    )
