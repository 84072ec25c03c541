"""Fault injection for the reliability tests: every point where a worker can be made to die,
and the faults a run must survive.

Each death point SIGKILLs the process, as an out-of-memory kill, a preempted machine or a power
cut would: no `finally`, no flush, no cleanup. The tests set these variables in the
environment of the processes they start (or of their own, for code they call in-process); in
production none is set, and each point costs one environment lookup.

``LORACLE_FAULT_KILL_BEFORE_LEASE=1``
    The process that received a job's message kills itself before taking the job's lease,
    on the first delivery of each job only: the message is gone and the job still queued.
    (`before_lease`, called by `worker.service.execute_job`.)

``LORACLE_FAULT_KILL_AT_STEP=N``
    The training process kills itself once step N (or a later one) is recorded in the job
    store, every time it gets there. (`step_kill_armed` and `after_step_recorded`, called
    by `worker.service.StoreHooks.on_progress`.)

``LORACLE_FAULT_KILL_IN_CHECKPOINT=N[:point]``
    The training process kills itself at `point` of writing checkpoint N, once per run
    directory. Points: ``mid-write`` (the default: adapter, optimizer and scheduler written;
    RNG and trainer state not yet) and ``before-marker`` (everything the Trainer writes is on
    disk and the temporary completion marker too, but it is not renamed into place).
    (`in_checkpoint`, called by `worker.checkpoints`' Trainer.)

``LORACLE_FAULT_KILL_RANK=R:N``
    In a run on several processes (`worker.distributed`), rank R kills itself once step N
    (or a later one) is logged, every time it gets there: a card lost mid-job.
    (`rank_step`, called by `worker.distributed.RankHooks.on_progress` on every rank.)

``LORACLE_FAULT_STEP_DELAY_S=S``
    Not a death: every optimizer step of a one-card run takes S seconds more, a slow card.
    Lets a test act on a run mid-way (pause it, cancel it) however fast the machine is.
    (`step_delay`, called by `worker.service.StoreHooks.on_progress`.)

``LORACLE_FAULT_OOM_ABOVE_MICRO_BATCH=N``
    Not a death: a card too small for the run. A training step raises torch's own
    `OutOfMemoryError` (what CUDA's allocator raises) while the run's micro batch is above N
    (0: whatever the micro batch). Raised when optimizer step K+1 begins, K steps done
    (counting steps before a resume), K from ``LORACLE_FAULT_OOM_AT_STEP`` (default 1): after
    the steps and checkpoints before it, as a real out-of-memory error at a longer batch is.
    Two more conditions, each of which raises too when set:
    ``LORACLE_FAULT_OOM_WITHOUT_CHECKPOINTING=1`` while gradient checkpointing is off, and
    ``LORACLE_FAULT_OOM_16BIT_BASE=1`` while the base is not quantized to 4 bits. What a run
    needs to fit is then known, and the out-of-memory retries (`worker.oom`) are tested on
    the CPU with the real error. (`oom_callbacks`, added to the Trainer by
    `worker.training.run_training`.)
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loracle.plan import TrainingPlan
    from loracle.settings import Settings

OOM_CONDITIONS = (
    "LORACLE_FAULT_OOM_ABOVE_MICRO_BATCH",
    "LORACLE_FAULT_OOM_WITHOUT_CHECKPOINTING",
    "LORACLE_FAULT_OOM_16BIT_BASE",
)


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def before_lease(settings: Settings, job_id: str) -> None:
    """``LORACLE_FAULT_KILL_BEFORE_LEASE``: see the module docstring."""
    if os.environ.get("LORACLE_FAULT_KILL_BEFORE_LEASE") != "1":
        return
    # On disk, not in memory: the redelivery reaches a fresh process, which must not die too.
    marker = Path(settings.data_dir) / "faults" / f"{job_id}.before-lease"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    _kill()


def step_delay() -> None:
    """``LORACLE_FAULT_STEP_DELAY_S``: see the module docstring."""
    delay = os.environ.get("LORACLE_FAULT_STEP_DELAY_S")
    if delay:
        time.sleep(float(delay))


def step_kill_armed() -> bool:
    """Whether ``LORACLE_FAULT_KILL_AT_STEP`` is set: the caller must then record the step
    before calling `after_step_recorded`, or the kill would come before what it tests."""
    return "LORACLE_FAULT_KILL_AT_STEP" in os.environ


def after_step_recorded(step: int) -> None:
    """``LORACLE_FAULT_KILL_AT_STEP``: see the module docstring."""
    target = os.environ.get("LORACLE_FAULT_KILL_AT_STEP")
    if target and step >= int(target):
        _kill()


def in_checkpoint(output_dir: str | Path, point: str) -> None:
    """``LORACLE_FAULT_KILL_IN_CHECKPOINT``: see the module docstring. `output_dir` is the
    checkpoint's directory, `point` where in its writing the caller is."""
    value = os.environ.get("LORACLE_FAULT_KILL_IN_CHECKPOINT")
    if not value:
        return
    target, _, at = value.partition(":")
    # Next to the checkpoints, so the resumed run that follows is not killed again.
    done = Path(output_dir).with_name(".fault-injected")
    if (
        Path(output_dir).name == f"checkpoint-{target}"
        and (at or "mid-write") == point
        and not done.exists()
    ):
        done.touch()
        _kill()


def rank_step(rank: int, step: int) -> None:
    """``LORACLE_FAULT_KILL_RANK``: see the module docstring."""
    value = os.environ.get("LORACLE_FAULT_KILL_RANK")
    if not value:
        return
    target, _, at = value.partition(":")
    if int(target) == rank and step >= int(at or "1"):
        _kill()


def oom_reason(plan: TrainingPlan) -> str | None:
    """Why the ``LORACLE_FAULT_OOM_*`` conditions make `plan` run out of memory, or None when
    it fits (see the module docstring)."""
    env = os.environ
    above = env.get("LORACLE_FAULT_OOM_ABOVE_MICRO_BATCH")
    if above and plan.micro_batch_size > int(above):
        return f"micro batch {plan.micro_batch_size} > {above}"
    unchecked = not plan.gradient_checkpointing
    if env.get("LORACLE_FAULT_OOM_WITHOUT_CHECKPOINTING") == "1" and unchecked:
        return "gradient checkpointing off"
    if env.get("LORACLE_FAULT_OOM_16BIT_BASE") == "1" and not plan.quantize_4bit:
        return "16-bit base"
    return None


def oom_callbacks(plan: TrainingPlan) -> list[Any]:
    """The Trainer callback that raises the out-of-memory fault for `plan`, when one of the
    ``LORACLE_FAULT_OOM_*`` conditions is set (else none)."""
    if not any(env in os.environ for env in OOM_CONDITIONS):
        return []
    from transformers import TrainerCallback

    at_step = int(os.environ.get("LORACLE_FAULT_OOM_AT_STEP", "1"))

    class OutOfMemoryFault(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            reason = oom_reason(plan)
            if reason is not None and state.global_step >= at_step:
                import torch

                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate 2.00 GiB (injected by "
                    f"LORACLE_FAULT_OOM_*: {reason}, in step {state.global_step + 1})"
                )

    return [OutOfMemoryFault()]
