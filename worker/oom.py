"""Out of memory is recovered, not fatal: a one-card run tried again with the advisor's next
remedy, from its newest checkpoint.

`train_one_card` runs a plan (`worker.training.run_training`); when CUDA runs out of memory
(torch's `OutOfMemoryError`; `torch.cuda.OutOfMemoryError` is the same class) it

1. takes what the failed try measured (the peak from its start to the error, the step), then
   frees what it held: the frames of the error's traceback hold the try's model, optimizer
   and Trainer, so they are cleared, then `gc.collect()` and, on CUDA, `empty_cache()` hand
   the memory back before the next try loads its own;
2. asks the advisor for the next remedy that keeps the effective batch
   (`advisor.oom.next_batch_keeping_remedy`: gradient checkpointing, then a smaller micro
   batch with more accumulation, then QLoRA when the job allows a change of variant) and
   applies it to the plan;
3. records the new plan as the job's (the API then shows the hyperparameters and variant that
   run) and a `oom_retry` event with the try, the measured peak, the change ({field: [old,
   new]}) and the checkpoint step the retry resumes from;
4. runs the new plan, which resumes from the newest complete checkpoint in the job's
   directory (`run_training` with `resume=True`), or from the start when there is none.

At most `LORACLE_OOM_RETRIES` retries (2 by default) in one start of the job. When they are
used, or no allowed remedy is left, the run raises `OutOfMemory` (the job fails with code
`out_of_memory`) after an `out_of_memory` event; both name the peak, what was tried and the
remedies left. Only one try ever reaches the end, so a job writes one adapter.

The retries are of the one-card path only. A job on several cards runs its ranks under
torchrun (`worker.distributed.launch`): a rank that runs out of memory exits with the error,
torchrun stops the others and the job fails with the launcher's summary, as before.
"""

from __future__ import annotations

import gc
import logging
import traceback
from collections.abc import Callable
from typing import Any

from advisor.oom import BatchKeepingRemedy, batch_keeping_remedies, next_batch_keeping_remedy
from loracle import recipe
from loracle.plan import TrainingPlan
from loracle.settings import Settings
from worker import checkpoints
from worker.errors import LeaseLost, OutOfMemory
from worker.memory_monitor import PeakMemory
from worker.training import TrainingHooks, TrainingResult, failure_of, run_training

log = logging.getLogger("loracle.worker")

GIB = 1 << 30


def variant_change_allowed(job: Any) -> bool:
    """Whether a stored job lets the retries change its variant (to QLoRA): its variant was
    the advisor's choice (`auto`), or it was submitted with `allow_variant_change: true`."""
    return job.requested_variant == "auto" or bool((job.method or {}).get("allow_variant_change"))


def apply_remedy(plan: TrainingPlan, remedy: BatchKeepingRemedy, device: str) -> TrainingPlan:
    """`plan` with `remedy`'s settings. QLoRA changes the base's quantization alone: the
    optimizer the run had stays (on a card, an unset one would become paged 8-bit AdamW for
    QLoRA, whose state does not load from the checkpoint's 32-bit AdamW state)."""
    update = dict(remedy.settings)
    if remedy.kind == "quantize_base":
        update["optimizer"] = recipe.default_optimizer(plan, device)
    return plan.model_copy(update=update)


def changes(old: TrainingPlan, new: TrainingPlan) -> dict[str, list[Any]]:
    """{field: [old, new]} of every plan field that differs."""
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    return {k: [before[k], after[k]] for k in after if before.get(k) != after[k]}


def peak_figures(peak: PeakMemory | None) -> dict[str, Any]:
    """The measured peak as the events carry it: the raw record (bytes) and its GiB figures
    (allocated and reserved on CUDA, the resident set's growth on the CPU)."""

    def gib(value: int | None) -> float | None:
        return round(value / GIB, 4) if value is not None else None

    if peak is None:
        return {"peak": None}
    return {
        "peak": peak.model_dump(mode="json"),
        "peak_allocated_gib": gib(peak.allocated_bytes),
        "peak_reserved_gib": gib(peak.reserved_bytes),
        "rss_growth_gib": gib(peak.rss_growth_bytes),
    }


def _release(exc: BaseException) -> None:
    """Clear the frames of `exc`'s traceback and of the errors it came from: their locals hold
    the failed try's model, optimizer and Trainer. (This function's own frame is running and
    is left as it is.)"""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


def free_memory() -> None:
    """Hand what the failed try held back: the garbage collector for its reference cycles
    (a Trainer and its model refer to each other through callbacks and hooks), then, on CUDA,
    the caching allocator's free blocks to the driver (`empty_cache`), so the next try
    starts from what is really free."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_one_card(
    plan: TrainingPlan,
    hooks: TrainingHooks,
    *,
    retries: int,
    variant_change_allowed: bool,
    record_plan: Callable[[TrainingPlan], None] | None = None,
) -> TrainingResult:
    """Run `plan` on this process's card, retried after an out-of-memory error as the module
    docstring says. `record_plan` is called with each retry's plan before it runs (the
    worker stores it as the job's). Raises `OutOfMemory` when the run does not fit."""
    import torch

    from worker.modeling import detect_device

    device = detect_device()
    tries = 1 + retries
    tried: list[str] = []
    attempt = 1
    while True:
        try:
            return run_training(plan, hooks, resume=True)
        except torch.OutOfMemoryError as exc:
            failure = failure_of(exc)
            error = (str(exc).strip().splitlines() or ["CUDA out of memory"])[0][:300]
            _release(exc)
        free_memory()
        peak = failure.peak if failure is not None else None
        step = failure.steps if failure is not None else None
        log.warning("out of memory on try %d of %d: %s", attempt, tries, error)
        remedy = next_batch_keeping_remedy(plan, plan.combination, variant_change_allowed)
        if remedy is None or attempt >= tries:
            raise _did_not_fit(
                plan, hooks, variant_change_allowed, attempt, tries, step, peak, tried, error
            )
        new = apply_remedy(plan, remedy, device)
        checkpoints_dir = plan.output_dir.expanduser().resolve() / checkpoints.CHECKPOINTS_DIRNAME
        checkpoint, resumed_from, _ = checkpoints.find_resumable_checkpoint(checkpoints_dir)
        if record_plan is not None:
            record_plan(new)
        hooks.on_event(
            "oom_retry",
            {
                "attempt": attempt,
                "retry": attempt,
                "retries": retries,
                "step": step,
                **peak_figures(peak),
                "remedy": remedy.change,
                "kind": remedy.kind,
                "change": changes(plan, new),
                "resumed_from_step": resumed_from if checkpoint is not None else None,
                "error": error,
            },
        )
        tried.append(remedy.change)
        plan = new
        attempt += 1


def _did_not_fit(
    plan: TrainingPlan,
    hooks: TrainingHooks,
    variant_change_allowed: bool,
    attempt: int,
    tries: int,
    step: int | None,
    peak: PeakMemory | None,
    tried: list[str],
    error: str,
) -> OutOfMemory:
    """The error (and the `out_of_memory` event) of a run that did not fit on any try."""
    from worker.messages import peak_text

    figures = peak_figures(peak)
    left = batch_keeping_remedies(plan, plan.combination, variant_change_allowed)
    where = f"in step {step + 1}" if step is not None else "before training"
    message = f"out of memory {where} on try {attempt} of {tries} ({peak_text(figures)})"
    message += f"; tried: {'; '.join(tried)}" if tried else ""
    if any(r.allowed for r in left):
        message += (
            f". Remedies left that keep the batch: {'; '.join(r.describe() for r in left)}; "
            "LORACLE_OOM_RETRIES sets how many are tried"
        )
    else:
        blocked = [r.describe() for r in left]
        message += (
            ". No remedy that keeps the batch is left"
            + (f" (not tried: {'; '.join(blocked)})" if blocked else "")
            + ": shorten seq_len, lower lora_rank, use an 8-bit optimizer, or run on a card "
            "with more memory (POST /v1/recommendations says what fits)"
        )
    hooks.on_event(
        "out_of_memory",
        {
            "message": message,
            "attempts": attempt,
            "step": step,
            **figures,
            "tried": tried,
            "remedies_left": [
                {"change": r.change, "settings": r.settings, "allowed": r.allowed} for r in left
            ],
            "error": error,
        },
    )
    return OutOfMemory(
        message, peak=peak, attempts=attempt, remedies_left=[r.describe() for r in left]
    )


def store_plan(settings: Settings, job_id: str, token: int) -> Callable[[TrainingPlan], None]:
    """A `record_plan` that makes a retry's plan the stored job's: its plan (the API's
    hyperparameters) and its variant and ideas, written only by the lease's holder."""
    from loracle.store import jobs as store
    from loracle.store.db import session

    def record(plan: TrainingPlan) -> None:
        with session(settings.resolved_database_url) as s:
            if not store.update_progress(
                s,
                job_id,
                token,
                plan=plan.model_dump(mode="json"),
                variant=plan.variant,
                combine_with=list(plan.combine_with),
            ):
                raise LeaseLost(f"job {job_id}: another process owns it; no retry here")

    return record
