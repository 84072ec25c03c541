"""One fine-tuning run, top to bottom: `run_training(plan) -> TrainingResult`.

The loop is transformers' `Trainer` (gradient accumulation, mixed precision, schedulers,
checkpoints with RNG state, resume); this module only builds its inputs from the plan and
hooks in with a callback. How the model is built lives in `worker.modeling`, the data in
`worker.data`, checkpoints in `worker.checkpoints`, the memory measurement in
`worker.memory_monitor`, the record in `worker.artifacts`.

Layout of `plan.output_dir`:

    checkpoints/checkpoint-<step>/   Trainer checkpoints, every `checkpoint_steps` steps
    adapter/                          the final adapter and the run record (succeeded runs), or
                                      the partial adapter and checkpoint-<step>.tar (cancelled)

Semantics a caller relies on:

- Cancel: `hooks.should_stop()` is asked after every micro-batch and every optimizer step;
  once it says True the Trainer stops before the next optimizer step. The result has status
  "cancelled"; `adapter/` gets the adapter as trained so far and the newest complete checkpoint
  as one archive (`worker.cancelled`), and the checkpoints stay so a later run can resume.
- Stop for a shutdown: when `hooks.checkpoint_on_stop()` says True as `should_stop()` says True
  at an optimizer step's end, the Trainer first saves a checkpoint of that step; the result has
  status "stopped" (the caller requeues the job, which resumes from it).
- Ownership: `hooks.owns_run()` is asked before a checkpoint is written, before it is
  sealed, and before the adapter is published; when it says False the run raises
  `LeaseLost` and writes nothing more (another process has taken the run over).
- Checkpoints are complete or ignored (`worker.checkpoints` says how): each is sealed with a
  completion marker once it is on disk, and old ones are rotated out only after the newest is
  sealed. A `checkpoint` event is sent after the seal.
- Resume: with `resume=True`, the newest complete checkpoint in `checkpoints/` is resumed, and
  a `resumed` event names its step. Incomplete ones (a crash mid-write, or before the marker)
  are skipped with a warning. With `resume=False` existing checkpoints are deleted first, so a
  later resume never picks up a stale run.
- Memory: the peak since the start of the run, as `worker.memory_monitor` measures it (CUDA's
  allocator peaks on a GPU, the growth of the process's RSS on CPU). A run that raises (out of
  memory, say) carries the peak up to the error and its step on the exception (`failure_of`).
- Evaluation: a succeeded run with a validation file ends with the base model (adapter
  disabled) and the adapter scored on it (`worker.evaluation`): `comparison` in metrics.json,
  an `evaluation` event, the base's loss as a line in loss.png. A comparison that fails is
  recorded (its error, and a warning) and the run still succeeds; runs over several ranks
  skip it.
- Throughput: non-padding tokens (the attention mask's sum) per second of this call's
  training time.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from loracle import recipe
from loracle.plan import TrainingPlan
from worker import (
    artifacts,
    cancelled,
    checkpoints,
    data,
    evaluation,
    faults,
    modeling,
    safety,
)
from worker.errors import LeaseLost
from worker.memory_monitor import MemoryMonitor, PeakMemory


class TrainingHooks:
    """How a caller (a Celery task, the CLI) follows and steers a run. Override what you need.

    `should_stop` is called after every micro-batch and every optimizer step: keep it cheap
    at micro-batches (throttle a database query on the caller's side) and answer from the
    source of truth at optimizer steps (``step_end=True``), so a cancel stops the run within
    one optimizer step.
    """

    def on_event(self, type: str, data: dict[str, Any]) -> None:
        """Something happened: `started`, `warning`, `resumed`, `checkpoint`, `cancelled`,
        `stopped`, `evaluation` (the base against the adapter, `worker.evaluation`),
        `finished`. `data` is JSON-serialisable."""

    def on_progress(
        self,
        step: int,
        total_steps: int,
        loss: float,
        learning_rate: float,
        tokens_per_second: float,
        eta_seconds: float | None,
    ) -> None:
        """Called at every logging step (`plan.logging_steps`)."""

    def should_stop(self, step_end: bool = False) -> bool:
        """Return True to cancel the run cooperatively. `step_end` is True at the end of an
        optimizer step, False at the end of a micro-batch."""
        return False

    def checkpoint_on_stop(self) -> bool:
        """Asked once `should_stop` said True at an optimizer step's end: True when the stop
        is a pause rather than a cancel (the worker shuts down; the job resumes elsewhere). The
        Trainer then saves a checkpoint of that step before it stops, and the result's status
        is "stopped"."""
        return False

    def owns_run(self) -> bool:
        """Asked right before a checkpoint is written, before it is sealed and before the
        adapter is published: False when another process has taken this run over (a lost
        lease), and this one must write nothing more (the run raises `LeaseLost`). May raise
        when ownership cannot be established at all; the run then stops with that error."""
        return True


class StepLog(BaseModel):
    """One logged optimizer step: mean training loss since the previous log, learning rate
    (lora_A's under LoRA+) and gradient norm before clipping."""

    step: int
    loss: float
    learning_rate: float
    grad_norm: float | None = None


class TrainingResult(BaseModel):
    """What a run did. `steps` is the optimizer step reached (counting steps done before a
    resume), `losses` the whole logged history (also across a resume)."""

    status: Literal["succeeded", "cancelled", "stopped"]
    steps: int
    total_steps: int
    final_loss: float | None
    losses: list[StepLog]
    eval_loss: float | None = None
    # The base model against the adapter on the validation file (worker.evaluation), at the
    # end of a succeeded run with one; or why it was skipped, or the error it met.
    comparison: dict[str, Any] | None = None
    tokens_seen: int
    tokens_per_second: float
    runtime_seconds: float
    peak_memory: PeakMemory
    resumed_from_step: int | None = None
    trainable_parameters: int
    all_parameters: int
    device: str
    precision: str
    optimizer: str
    warnings: list[str]
    artifacts: dict[str, str]
    # What a cancelled run kept as the job's artifacts (worker.cancelled.keep).
    kept: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# The callback between the Trainer and the hooks
# ---------------------------------------------------------------------------------------------


def _make_callback(hooks: TrainingHooks):
    from transformers import TrainerCallback

    class HooksCallback(TrainerCallback):
        """Forwards progress to the hooks and turns `should_stop()` into a Trainer stop."""

        def __init__(self) -> None:
            self.cancelled_at: int | None = None
            self.paused = False
            self.started = 0.0
            self.elapsed = 0.0
            self.first_step = 0
            self.first_tokens = 0

        def session_tokens(self, state) -> int:
            return state.num_input_tokens_seen - self.first_tokens

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()
            self.first_step = state.global_step
            self.first_tokens = state.num_input_tokens_seen

        def on_train_end(self, args, state, control, **kwargs):
            self.elapsed = time.perf_counter() - self.started

        def _check_stop(self, state, control, step_end: bool) -> None:
            if self.cancelled_at is None and hooks.should_stop(step_end=step_end):
                self.cancelled_at = state.global_step
                control.should_training_stop = True
                if step_end and hooks.checkpoint_on_stop():
                    self.paused = control.should_save = True  # saved before the Trainer stops

        def on_substep_end(self, args, state, control, **kwargs):
            self._check_stop(state, control, step_end=False)

        def on_step_end(self, args, state, control, **kwargs):
            self._check_stop(state, control, step_end=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "eval_loss" in logs:  # an evaluation every eval_steps (full set)
                value = float(logs["eval_loss"])
                hooks.on_event(
                    "metrics",
                    {
                        "step": state.global_step,
                        "total_steps": state.max_steps,
                        "eval_loss": value,
                        "valid_loss": value,
                        "full_valid_loss": value,
                        "message": f"step {state.global_step} validation loss {value:.4f}",
                    },
                )
            if not logs or "loss" not in logs:
                return
            elapsed = time.perf_counter() - self.started
            done = state.global_step - self.first_step
            eta = elapsed / done * (state.max_steps - state.global_step) if done else None
            hooks.on_progress(
                state.global_step,
                state.max_steps,
                float(logs["loss"]),
                float(logs.get("learning_rate", 0.0)),
                self.session_tokens(state) / elapsed if elapsed > 0 else 0.0,
                eta,
            )

        def on_save(self, args, state, control, **kwargs):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            hooks.on_event("checkpoint", {"step": state.global_step, "path": str(path)})

    return HooksCallback()


class RunFailure(BaseModel):
    """What a run that raised had reached: the peak memory measured from its start to the
    error (as `TrainingResult.peak_memory` measures it), and the optimizer steps done (counting
    those before a resume; None when it failed before its Trainer existed)."""

    peak: PeakMemory
    steps: int | None = None


_FAILURE_ATTRIBUTE = "loracle_run_failure"


def _note_failure(exc: BaseException, failure: RunFailure) -> None:
    # On the exception itself: the run's locals are gone by the time a caller catches it.
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, _FAILURE_ATTRIBUTE, failure)


def failure_of(exc: BaseException) -> RunFailure | None:
    """The `RunFailure` of an error `run_training` raised, or None for any other error (one
    raised before the run's memory monitor started)."""
    found = getattr(exc, _FAILURE_ATTRIBUTE, None)
    return found if isinstance(found, RunFailure) else None


def _ensure_owner(hooks: TrainingHooks, what: str) -> None:
    if not hooks.owns_run():
        raise LeaseLost(f"another process owns this run now; {what} not written")


# ---------------------------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------------------------


def base_layer_types(model: Any) -> dict[str, int]:
    """How many adapted layers wrap each base-layer class (``Linear``, bitsandbytes'
    ``Linear4bit``...): the record of what the adapters were trained on."""
    counts: dict[str, int] = {}
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if base is not None and hasattr(module, "lora_A"):
            name = f"{type(base).__module__.split('.')[0]}.{type(base).__name__}"
            counts[name] = counts.get(name, 0) + 1
    return counts


def optimizer_groups(optimizer: Any, model: Any) -> list[dict[str, Any]]:
    """Each optimizer parameter group's peak learning rate and which adapter matrices it
    holds (by peft's parameter names): the record of what LoRA+ did to B's rate."""
    if optimizer is None:
        return []
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        kinds: dict[str, int] = {}
        for param in group["params"]:
            name = names.get(id(param), "")
            kind = next(
                (k for k in ("lora_A", "lora_B", "lora_magnitude_vector") if k in name), "other"
            )
            kinds[kind] = kinds.get(kind, 0) + 1
        groups.append(
            {
                # LambdaLR keeps the schedule's base rate as initial_lr.
                "learning_rate": float(group.get("initial_lr", group["lr"])),
                "weight_decay": float(group.get("weight_decay", 0.0)),
                "parameters": kinds,
            }
        )
    return groups


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def cpu_fallback_message(requested: str, precision: str, estimate: dict[str, Any]) -> str:
    """The warning of a job whose estimate is for a CUDA card and that runs on the CPU."""
    asked = f" (the plan asked for {requested})" if requested not in ("auto", precision) else ""
    return (
        f"no CUDA GPU on this worker: the job runs on the CPU in {precision}{asked}. Its "
        f"memory estimate ({estimate.get('total_gib', 0):.3g} GiB) is for a CUDA card; what "
        "is measured here is the process's resident set growth, another quantity, so the two "
        "are reported side by side and not compared"
    )


def run_training(
    plan: TrainingPlan, hooks: TrainingHooks | None = None, resume: bool = True
) -> TrainingResult:
    """Run one plan to the end (or to a cancel) and return what happened.

    Raises `DataFileError` for unusable data, `ModelSourceError` for a refused model, and lets
    library errors (out of memory, a broken checkpoint) propagate: the caller records them
    (and retries an out-of-memory error, `worker.oom`). An error raised once the run started
    carries its `RunFailure` (`failure_of`): the peak memory up to the error and the step.
    """
    import transformers
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback

    from worker import distributed

    hooks = hooks or TrainingHooks()
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        hooks.on_event("warning", {"message": message})

    device = modeling.detect_device()
    requested = plan
    plan, fallbacks = modeling.resolve_plan(plan, device)
    for message in fallbacks:
        warn(message)
    if device == "cpu" and plan.estimate is not None:
        warn(cpu_fallback_message(requested.precision, plan.precision, plan.estimate))
    output_dir = plan.output_dir
    checkpoints_dir = output_dir / checkpoints.CHECKPOINTS_DIRNAME
    output_dir.mkdir(parents=True, exist_ok=True)
    if not resume and checkpoints_dir.exists():
        shutil.rmtree(checkpoints_dir)

    monitor = MemoryMonitor(device, precision=plan.precision).start()
    trainer = None
    try:
        # Seeds the adapter initialization (lora_A is random) before the model is built.
        transformers.set_seed(plan.seed)
        model, tokenizer = modeling.load_model_and_tokenizer(plan, device)
        trainable, total = model.get_nb_trainable_parameters()

        train = data.tokenize_file(plan.train_file, tokenizer, plan.seq_len)
        if train.dropped:
            warn(
                f"data: {train.dropped} of {train.rows} rows had no trained token within "
                f"seq_len={plan.seq_len} and were skipped; raise seq_len to keep them"
            )
        if train.truncated:
            warn(f"data: {train.truncated} of {train.rows} rows were cut to seq_len={plan.seq_len}")
        eval_examples = (
            data.tokenize_file(plan.validation_file, tokenizer, plan.seq_len).examples
            if plan.validation_file
            else None
        )

        callback = _make_callback(hooks)
        trainer = checkpoints.sealing_trainer(Trainer, partial(_ensure_owner, hooks))(
            model=model,
            args=recipe.training_arguments(
                plan, device, checkpoints_dir, **distributed.trainer_arguments(plan, device)
            ),
            train_dataset=train.examples,
            eval_dataset=eval_examples,
            data_collator=data.PadCollator(tokenizer.pad_token_id),
            optimizers=(recipe.build_optimizer(model, plan), None),
            callbacks=[callback, *faults.oom_callbacks(plan)],
        )
        # With tqdm off the Trainer prints every log dict to stdout; the hooks report instead.
        trainer.remove_callback(PrinterCallback)

        hooks.on_event(
            "started",
            {
                "device": device,
                "precision": plan.precision,
                "run": monitor.run_device.model_dump() if monitor.run_device else None,
                "optimizer": plan.optimizer,
                "variant": plan.variant,
                "combine_with": plan.combine_with,
                "train_rows": train.rows,
                "trainable_parameters": trainable,
                "all_parameters": total,
                "base_layers": base_layer_types(model),
            },
        )
        checkpoint, resumed_from, incomplete = (
            checkpoints.find_resumable_checkpoint(checkpoints_dir) if resume else (None, 0, [])
        )
        for path in incomplete:
            warn(f"checkpoint: {path.name} is incomplete (interrupted write) and was skipped")
        if checkpoint is not None:
            safety.check_checkpoint(checkpoint)
            hooks.on_event("resumed", {"step": resumed_from, "checkpoint": str(checkpoint)})
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        eval_loss = None
        if eval_examples and callback.cancelled_at is None:
            eval_loss = float(trainer.evaluate()["eval_loss"])
    except BaseException as exc:
        steps = trainer.state.global_step if trainer is not None else None
        _note_failure(exc, RunFailure(peak=monitor.stop(), steps=steps))
        raise
    peak = monitor.stop()

    state = trainer.state
    losses = [
        StepLog(
            step=entry["step"],
            loss=entry["loss"],
            learning_rate=entry.get("learning_rate", 0.0),
            grad_norm=entry.get("grad_norm"),
        )
        for entry in state.log_history
        if "loss" in entry
    ]
    tokens = callback.session_tokens(state)
    result = TrainingResult(
        status="succeeded"
        if callback.cancelled_at is None
        else ("stopped" if callback.paused else "cancelled"),
        steps=state.global_step,
        total_steps=state.max_steps,
        final_loss=losses[-1].loss if losses else None,
        losses=losses,
        eval_loss=eval_loss,
        tokens_seen=tokens,
        tokens_per_second=tokens / callback.elapsed if callback.elapsed > 0 else 0.0,
        runtime_seconds=callback.elapsed,
        peak_memory=peak,
        resumed_from_step=resumed_from if checkpoint is not None else None,
        trainable_parameters=trainable,
        all_parameters=total,
        device=device,
        precision=plan.precision,
        optimizer=plan.optimizer,
        warnings=warnings,
        artifacts={"checkpoints_dir": str(checkpoints_dir)},
    )
    if result.status == "stopped":
        hooks.on_event(result.status, {"step": result.steps})
        return result

    # Several ranks (worker.distributed): all join an FSDP gather, and rank 0 alone writes
    # (a cancelled run's partial adapter as much as a finished run's).
    adapter_state = distributed.full_adapter_state(trainer)
    if not distributed.is_writer(trainer):
        return result
    if result.status == "succeeded" and plan.validation_file:
        result.comparison = evaluation.evaluate_run(
            model,
            tokenizer,
            plan.validation_file,
            plan.seq_len,
            world_size=distributed.world()[1],
            batch_size=plan.micro_batch_size,
        )
        hooks.on_event(
            "evaluation",
            {**result.comparison, "message": evaluation.describe(result.comparison)},
        )
        if "error" in result.comparison:
            warn(evaluation.describe(result.comparison))
            result.warnings = list(warnings)
    metrics = result.model_dump(mode="json", exclude={"artifacts", "kept"})
    metrics["estimate"] = plan.estimate
    metrics["optimizer_groups"] = optimizer_groups(trainer.optimizer, model)
    record = artifacts.plan_record(plan, requested=requested, device=device, warnings=warnings)
    logged_steps, logged_losses = [e.step for e in losses], [e.loss for e in losses]
    # The last evaluation of a step counts (the final one repeats an eval_steps one).
    validation = sorted(
        {e["step"]: e["eval_loss"] for e in state.log_history if "eval_loss" in e}.items()
    )
    if result.status == "cancelled":
        _ensure_owner(hooks, "what the cancelled run keeps")
        result.kept = cancelled.keep(
            model,
            output_dir,
            checkpoints_dir,
            step=result.steps,
            plan=record,
            metrics=metrics,
            steps=logged_steps,
            losses=logged_losses,
        )
        hooks.on_event("cancelled", {"step": result.steps, **result.kept})
        return result

    result.artifacts.update(artifacts.artifact_paths(output_dir))
    _ensure_owner(hooks, "the adapter")
    artifacts.write_adapter(
        model,
        output_dir,
        plan=record,
        metrics=metrics,
        steps=logged_steps,
        losses=logged_losses,
        state_dict=adapter_state,
        validation=validation,
        base_loss=evaluation.base_loss(result.comparison),
    )
    # eval_loss too: a page following the job's events draws the validation point from here.
    hooks.on_event(
        "finished",
        {
            "step": result.steps,
            "final_loss": result.final_loss,
            "eval_loss": result.eval_loss,
            **result.artifacts,
        },
    )
    return result
