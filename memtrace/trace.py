"""Trace the memory of real training steps: `trace_memory(config, training, combo)`.

Two optimizer steps run the way the worker's Trainer runs them (autocast forward with the
model's own loss, backward, gradient clipping, the optimizer the Trainer would build, zero
grad), the second with optimizer state already allocated. With gradient accumulation each
step runs two micro batches, which is when gradients live across a forward pass (more micro
batches repeat the second one exactly). A `StorageTracker` follows every storage; the peak of
live bytes, with what was live at that moment sorted by kind, is the answer.

On `device="meta"` nothing is computed and nothing is allocated: a 7B model traces in
seconds. `target` says whose kernels the meta step imitates: "cuda" (what an estimate is
for: flash or memory-efficient attention, the fused dropout mask, bitsandbytes' CUDA
dispatch, foreach AdamW) or "cpu" (to check the trace against a real step on this machine,
`device="cpu"`, where the same tracker watches real tensors).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from advisor.architecture import from_hf_config
from advisor.memory import (
    WORKER_ALLOCATOR,
    Allocator,
    Breakdown,
    FitMargin,
    MemoryEstimate,
    StepPeak,
    run_assumptions,
    whole_run,
)
from advisor.profile import TrainingSettings
from advisor.variants import Combination
from loracle import recipe
from loracle.plan import TrainingPlan
from memtrace import build
from memtrace.emulation import (
    CUDA_HOST_OUTPUTS,
    HOLDS_SCORES,
    Autocast,
    gemm_4bit_substitute,
    meta_patches,
)
from memtrace.tracker import StorageTracker

# The worker's data collator pads a micro batch to its longest row and marks the padding in
# the attention mask; a traced batch of several rows is padded, one row is not.
IGNORE_INDEX = -100


@dataclass
class TraceResult:
    """What a traced step needed. Bytes; `peak_bytes` is CUDA-rounded for a CUDA target."""

    peak_bytes: int
    peak_phase: str
    by_kind: dict[str, int]
    trainable_params: int
    total_params: int
    attention_kernels: dict[str, int]
    target: str
    device: str
    ops: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    # On device="cuda": torch.cuda.max_memory_allocated / max_memory_reserved over the steps.
    measured: dict[str, int] | None = None
    # What was traced, for the whole-run terms the step's peak goes into.
    config: Mapping[str, Any] | None = None
    training: TrainingSettings | None = None
    lora_dropout: float | None = None

    @property
    def holds_scores(self) -> bool:
        """Whether any attention call ran a kernel that keeps the s x s score matrix."""
        return any(k in HOLDS_SCORES for k in self.attention_kernels)

    def estimate(
        self,
        combo: Combination,
        notes: list[str] | None = None,
        *,
        allocator: Allocator = WORKER_ALLOCATOR,
        evaluation: bool = False,
        margin: FitMargin | None = None,
    ) -> MemoryEstimate:
        """The result as the advisor's `MemoryEstimate` (method "trace"): the traced peak goes
        through the analytic model's `whole_run`, so both methods answer the same whole-run
        terms (the load, an evaluation pass, the allocator's reserve, the CUDA context)."""
        if self.config is None or self.training is None:
            raise ValueError("a whole-run estimate needs the traced config and training")
        allocated = float(self.peak_bytes)
        kinds = self.by_kind
        run = whole_run(
            from_hf_config(self.config),
            self.training,
            combo,
            StepPeak(allocated, float(kinds["activations"])),
            allocator=allocator,
            evaluation=evaluation,
            lora_dropout=self.lora_dropout,
        )
        phase = self.peak_phase
        if phase not in ("forward", "backward", "optimizer"):
            raise ValueError(f"a step has no phase {phase!r}")
        extra = {"margin": margin} if margin is not None else {}
        return MemoryEstimate(
            variant=combo.variant,
            combine_with=combo.combine_with,
            method="trace",
            breakdown=Breakdown(
                weights=float(kinds["weights"]),
                adapter=float(kinds["adapter"]),
                gradients=float(kinds["gradients"]),
                optimizer=float(kinds["optimizer"]),
                activations=float(kinds["activations"]),
                overhead=run.total - allocated,
            ),
            peak_phase=phase,  # type: ignore[arg-type]
            run=run,
            trainable_params=self.trainable_params,
            total_params=self.total_params,
            assumptions=tuple([*self.notes, *(notes or []), *run_assumptions(run)]),
            **extra,
        )


def make_plan(
    training: TrainingSettings, combo: Combination, lora_dropout: float | None = None
) -> TrainingPlan:
    """The worker's `TrainingPlan` for an advisor request (resolved: precision and optimizer
    set, as on a CUDA machine)."""
    return TrainingPlan(
        model="trace/model",
        train_file=Path("trace.jsonl"),
        output_dir=Path("trace"),
        variant=combo.variant,
        combine_with=list(combo.combine_with),
        micro_batch_size=training.micro_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        seq_len=max(training.seq_len, 2),
        lora_rank=training.lora_rank,
        lora_dropout=lora_dropout,
        target_modules=training.target_modules,
        precision=training.precision,
        optimizer=training.optimizer,
        gradient_checkpointing=training.gradient_checkpointing,
    )


def _batch(plan: TrainingPlan, vocab_size: int, device: str) -> dict[str, torch.Tensor]:
    rows, width = plan.micro_batch_size, plan.seq_len
    if device == "meta":
        ids = torch.empty(rows, width, dtype=torch.long, device="meta")
        return {
            "input_ids": ids,
            "attention_mask": torch.empty(rows, width, dtype=torch.long, device="meta"),
            "labels": torch.empty(rows, width, dtype=torch.long, device="meta"),
        }
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (rows, width), generator=generator)
    mask = torch.ones(rows, width, dtype=torch.long)
    labels = ids.clone()
    for row in range(1, rows):  # every row but the first is shorter: padding, as collated
        mask[row, width // 2 :] = 0
        labels[row, width // 2 :] = IGNORE_INDEX
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return {key: value.to(device) for key, value in batch.items()}


def _optimizer(model, plan: TrainingPlan, device: str, target: str, notes: list[str]):
    """The optimizer the worker's Trainer would step: LoRA+ from `recipe.build_optimizer`,
    otherwise what `Trainer.create_optimizer` builds for `TRAINER_OPTIM[plan.optimizer]`."""
    from transformers import Trainer

    traced = plan
    if plan.optimizer == "paged_adamw_8bit" and device == "meta":
        # Paged state lives in CUDA unified memory (cudaMallocManaged), which meta tensors
        # cannot stand in for; it has the size of adamw_8bit's, and is counted as such.
        traced = plan.model_copy(update={"optimizer": "adamw_8bit"})
        notes.append(
            "paged_adamw_8bit: optimizer state sized as adamw_8bit; on CUDA it lives in unified "
            "memory, outside torch.cuda.max_memory_allocated, until paged out"
        )
    optimizer = recipe.build_optimizer(model, traced)
    if optimizer is None:
        args = build.training_arguments(traced)
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        decay = set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
        ]
        optimizer = cls(groups, **kwargs)
    if device == "meta" and target == "cuda" and isinstance(optimizer, torch.optim.Optimizer):
        # torch.optim picks foreach kernels when every parameter is a CUDA tensor
        # (_default_to_fused_or_foreach); on meta it would pick the per-tensor loop.
        for group in optimizer.param_groups:
            if "foreach" in group and group["foreach"] is None and not group.get("fused"):
                group["foreach"] = True
    return optimizer


def _state_tensors(optimizer) -> list[torch.Tensor]:
    return [
        v
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    ]


def trace_memory(
    config: Mapping[str, Any],
    training: TrainingSettings,
    combo: Combination,
    *,
    lora_dropout: float | None = None,
    device: str = "meta",
    target: str = "cuda",
    steps: int = 2,
) -> TraceResult:
    """Run `steps` optimizer steps of the worker's training for this architecture and
    settings under the storage tracker, and return the peak."""
    if device not in ("meta", "cpu", "cuda") or target not in ("cuda", "cpu"):
        raise ValueError("device must be 'meta', 'cpu' or 'cuda', target 'cuda' or 'cpu'")
    if device != "meta" and target != device:
        raise ValueError(f"a real step on {device} runs {device} kernels: use target={device!r}")
    with warnings.catch_warnings():
        # transformers' deprecation notices (gradient_checkpointing -> activation_...) for
        # arguments the worker passes; they say nothing about the trace.
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        return _trace(config, training, combo, lora_dropout, device, target, steps)


def _trace(config, training, combo, lora_dropout, device, target, steps) -> TraceResult:
    started = time.perf_counter()
    notes: list[str] = []
    plan = make_plan(training, combo, lora_dropout)
    if device != "meta":
        torch.manual_seed(0)
    model = build.build_model(config, plan, device)
    base = model.get_base_model()
    vocab = base.config.get_text_config().vocab_size
    trainable, total = model.get_nb_trainable_parameters()
    optimizer = _optimizer(model, plan, device, target, notes)
    args = build.training_arguments(plan)

    substitutions = {}
    if device == "meta" and plan.quantize_4bit:
        substitutions[torch.ops.bitsandbytes.gemm_4bit.default] = gemm_4bit_substitute(target)
    tracker = StorageTracker(
        substitutions,
        count_device=device,
        host_outputs=CUDA_HOST_OUTPUTS if (device == "meta" and target == "cuda") else None,
    )
    tracker.register([p for p in model.parameters() if not p.requires_grad], "weights")
    tracker.register(model.buffers(), "weights")
    tracker.register(_quant_state_tensors(model), "weights")
    tracker.register([p for p in model.parameters() if p.requires_grad], "adapter")
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    hooks = [
        p.register_post_accumulate_grad_hook(lambda p: tracker.mark([p.grad], "gradients"))
        for p in trainable_params
    ]

    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.precision)
    emulation = Autocast(target)
    padded = plan.micro_batch_size > 1
    micro_batches = min(plan.gradient_accumulation_steps, 2)
    scale = None
    autocast_device = "cuda" if device == "cuda" else "cpu"
    if device == "cuda":
        # What the worker's MemoryMonitor reads, from here on (the build's transients, such
        # as bf16 weights before quantization, are not part of a training step).
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        with _meta_context(device, padded, target, emulation), tracker:
            # Every allocation belongs to a phase of the step: what comes before a forward
            # (the loss scale, each micro batch's input) is the forward's.
            tracker.phase = "forward"
            if plan.precision == "fp16":
                # The Trainer's GradScaler (through accelerate) multiplies the loss by a scale
                # and unscales the gradients in place before clipping.
                scale = torch.full((), 65536.0, device=device)
            for _ in range(steps):
                for _ in range(micro_batches):
                    tracker.phase = "forward"
                    batch = _batch(plan, vocab, device)
                    with torch.autocast(
                        autocast_device,
                        dtype=autocast_dtype or torch.bfloat16,
                        enabled=autocast_dtype is not None,
                    ):
                        loss = model(**batch).loss
                    del batch
                    if plan.gradient_accumulation_steps > 1:
                        loss = loss / plan.gradient_accumulation_steps
                    if scale is not None:
                        loss = loss * scale
                    tracker.phase = "backward"
                    _backward(loss)
                    del loss
                tracker.phase = "optimizer"
                grads = [p.grad for p in trainable_params if p.grad is not None]
                if scale is not None:
                    torch._foreach_mul_(grads, 1.0 / 65536.0)
                if args.max_grad_norm and args.max_grad_norm > 0:
                    # One 0-dim norm per gradient, foreach on CUDA or not: the same bytes.
                    torch.nn.utils.clip_grad_norm_(trainable_params, args.max_grad_norm)
                del grads
                optimizer.step()
                tracker.mark(_state_tensors(optimizer), "optimizer")
                model.zero_grad(set_to_none=True)
    finally:
        for hook in hooks:
            hook.remove()

    measured = None
    if device == "cuda":
        torch.cuda.synchronize()
        measured = {
            "max_memory_allocated": torch.cuda.max_memory_allocated(),
            "max_memory_reserved": torch.cuda.max_memory_reserved(),
        }
    report = tracker.report(cuda=target == "cuda")
    if device == "meta" and emulation.kernels:
        kernels = ", ".join(f"{k} x{n}" for k, n in sorted(emulation.kernels.items()))
        notes.append(f"attention kernels modelled for {target}: {kernels}")
    return TraceResult(
        peak_bytes=report.total,
        peak_phase=report.phase,
        by_kind=report.by_kind,
        trainable_params=trainable,
        total_params=total,
        attention_kernels=dict(emulation.kernels),
        target=target,
        device=device,
        ops=tracker.ops,
        seconds=time.perf_counter() - started,
        notes=notes,
        measured=measured,
        config=config,
        training=training,
        lora_dropout=lora_dropout,
    )


def _backward(loss: torch.Tensor) -> None:
    """`loss.backward()` without passing through `__torch_function__`: a torch-function mode
    is switched off while it handles a call, so a backward entered through the emulation
    mode would recompute checkpointed layers without it. This is the engine call
    `torch.autograd.backward` makes for a scalar loss."""
    from torch.autograd.graph import _engine_run_backward

    _engine_run_backward(
        (loss,),
        (torch.ones_like(loss, memory_format=torch.preserve_format),),
        False,
        False,
        (),
        allow_unreachable=True,
        accumulate_grad=True,
    )


def _quant_state_tensors(model) -> list[torch.Tensor]:
    """bitsandbytes keeps each 4-bit weight's block constants on its `quant_state`, not as
    parameters or buffers."""
    out = []
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        while state is not None:
            out += [
                t
                for t in (state.absmax, state.code, getattr(state, "offset", None))
                if isinstance(t, torch.Tensor)
            ]
            state = getattr(state, "state2", None)
    return out


def _meta_context(device: str, padded: bool, target: str, emulation: Autocast):
    if device != "meta":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(meta_patches(padded, target, emulation))
    stack.enter_context(emulation)
    return stack
