"""One fine-tuning run, top to bottom: `run_training(plan) -> TrainingResult`.

The loop is transformers' `Trainer` (gradient accumulation, mixed precision, schedulers,
checkpoints with RNG state, resume); this module only builds its inputs from the plan and
hooks in with a callback. How the model is built lives in `worker.modeling`, the data in
`worker.data`, the record in `worker.artifacts`.

Layout of `plan.output_dir`:

    checkpoints/checkpoint-<step>/   Trainer checkpoints, every `checkpoint_steps` steps
    adapter/                          the final adapter and the run record (succeeded runs only)

Semantics a caller relies on:

- Cancel: `hooks.should_stop()` is asked after every micro-batch and every optimizer step;
  once it says True the Trainer stops before the next optimizer step. The result has status
  "cancelled", no adapter is written (`adapter/` keeps whatever a previous successful run left
  there), and the checkpoints stay so a later run can resume.
- Ownership: `hooks.owns_run()` is asked before a checkpoint is written, before it is
  sealed, and before the adapter is published; when it says False the run raises
  `LeaseLost` and writes nothing more (another process has taken the run over).
- Checkpoints are complete or ignored. Once the Trainer has written `checkpoint-<step>/`,
  every file in it and the directory itself are fsynced, and only then is the completion
  marker `loracle-complete.json` (the step and each file's size) created atomically: written
  to a temporary file, fsynced, renamed over with `os.replace`, and the directory fsynced
  again. Old checkpoints are rotated out (`checkpoint_limit`) only after the newest is
  sealed, so a complete one is on disk at every instant, even with a limit of 1. A
  `checkpoint` event is sent after the seal.
- Resume: with `resume=True`, the newest complete checkpoint in `checkpoints/` (it has the
  marker, every file the marker lists at its recorded size, the adapter, optimizer, scheduler
  and trainer state, and its trainer_state.json parses) is resumed, and a `resumed` event
  names its step. Incomplete ones (a crash mid-write, or before the marker) are skipped with
  a warning. With `resume=False` existing checkpoints are deleted first, so a later resume
  never picks up a stale run.
- Memory: on CUDA, `torch.cuda.max_memory_allocated` / `max_memory_reserved` since the start of
  the run. On CPU, the growth of the process's resident set size (RSS) over its value at the
  start of the run, its peak the kernel's own high-water mark (reset at run start; sampled
  every 10 ms by a thread where the kernel offers none): it includes the model weights,
  adapters, optimizer state, activations and allocator caches.
- Throughput: non-padding tokens (the attention mask's sum) per second of this call's
  training time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from worker import artifacts, data, modeling, safety
from worker.errors import LeaseLost
from worker.plan import TrainingPlan

CHECKPOINTS_DIRNAME = "checkpoints"
# Files a Trainer checkpoint of a PEFT model must hold to be resumed from.
CHECKPOINT_FILES = (
    "adapter_model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "trainer_state.json",
)
# Created (atomically) after everything else in a checkpoint is on disk: the only sign of a
# complete checkpoint. Its temporary name, while it is being written.
CHECKPOINT_MARKER = "loracle-complete.json"
CHECKPOINT_MARKER_TMP = CHECKPOINT_MARKER + ".tmp"


class TrainingHooks:
    """How a caller (a Celery task, the CLI) follows and steers a run. Override what you need.

    `should_stop` is called after every micro-batch and every optimizer step: keep it cheap
    at micro-batches (throttle a database query on the caller's side) and answer from the
    source of truth at optimizer steps (``step_end=True``), so a cancel stops the run within
    one optimizer step.
    """

    def on_event(self, type: str, data: dict[str, Any]) -> None:
        """Something happened: `started`, `warning`, `resumed`, `checkpoint`, `cancelled`,
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


class PeakMemory(BaseModel):
    """Measured peak memory of the run, in bytes; `measures` says what the numbers mean."""

    device: str
    measures: str
    allocated_bytes: int | None = None
    reserved_bytes: int | None = None
    rss_baseline_bytes: int | None = None
    rss_peak_bytes: int | None = None
    rss_growth_bytes: int | None = None


class TrainingResult(BaseModel):
    """What a run did. `steps` is the optimizer step reached (counting steps done before a
    resume), `losses` the whole logged history (also across a resume)."""

    status: Literal["succeeded", "cancelled"]
    steps: int
    total_steps: int
    final_loss: float | None
    losses: list[StepLog]
    eval_loss: float | None = None
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


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


class MemoryMonitor:
    """Peak memory between `start()` and `stop()`; see the module docstring for what it is.

    On Linux the CPU peak is the kernel's own high-water mark of the process's RSS (`VmHWM`
    in /proc/self/status), reset at `start()` by writing 5 to /proc/self/clear_refs: exact,
    and no thread. Elsewhere a thread samples the RSS every `interval_s` (it misses spikes
    shorter than that, and each sample briefly takes a core from the training).
    """

    def __init__(self, device: str, interval_s: float = 0.01) -> None:
        self.device = device
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kernel_peak = False

    def start(self) -> MemoryMonitor:
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        self._process = psutil.Process()
        self._kernel_peak = _reset_peak_rss()
        self.baseline = self.peak = self._process.memory_info().rss
        if not self._kernel_peak:
            self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> PeakMemory:
        if self.device == "cuda":
            import torch

            return PeakMemory(
                device="cuda",
                measures="torch.cuda.max_memory_allocated / max_memory_reserved since run start",
                allocated_bytes=torch.cuda.max_memory_allocated(),
                reserved_bytes=torch.cuda.max_memory_reserved(),
            )
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peak = _peak_rss() if self._kernel_peak else None
        self.peak = max(self.peak, peak or 0, self._process.memory_info().rss)
        how = (
            "the kernel's high-water mark (VmHWM), reset at run start"
            if peak is not None
            else f"sampled every {self.interval_s * 1000:.0f} ms"
        )
        return PeakMemory(
            device=self.device,
            measures=f"process RSS growth over its value at run start; peak: {how}",
            rss_baseline_bytes=self.baseline,
            rss_peak_bytes=self.peak,
            rss_growth_bytes=self.peak - self.baseline,
        )


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux 4.0+); False where it can't."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _peak_rss() is not None


def _peak_rss() -> int | None:
    """The process's peak RSS in bytes since the last reset (VmHWM), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's contents (a directory: its entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal_checkpoint(
    directory: Path, step: int, before_rename: Callable[[], None] | None = None
) -> None:
    """Mark a checkpoint the Trainer has finished writing as complete, crash-safely.

    Every file under `directory` and every directory in it are fsynced first, so the marker
    can never reach the disk before the data it vouches for (a power cut after a rename
    but before the data blocks would otherwise leave a "complete" checkpoint of zeros). The
    marker is then written to a temporary name, fsynced, renamed into place (atomic on
    POSIX: it exists whole or not at all), and the directory and its parent are fsynced so
    the rename itself is durable. Cost: the save waits until what the Trainer just wrote
    is on the disk (the page cache would write it back later anyway), plus one fsync per
    directory. `before_rename` runs between the temporary file and the rename (a
    fault-injection point for the reliability tests).
    """
    skip = {CHECKPOINT_MARKER, CHECKPOINT_MARKER_TMP}
    files: dict[str, int] = {}
    folders = [directory]
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() or path.name in skip:
            continue
        if path.is_dir():
            folders.append(path)
        elif path.is_file():
            _fsync(path)
            files[path.relative_to(directory).as_posix()] = path.stat().st_size
    for folder in reversed(folders):  # deepest first: entries before the folder naming them
        _fsync(folder)
    tmp = directory / CHECKPOINT_MARKER_TMP
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump({"step": step, "files": files}, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    if before_rename is not None:
        before_rename()
    os.replace(tmp, directory / CHECKPOINT_MARKER)
    _fsync(directory)
    _fsync(directory.parent)


def unseal_checkpoint(directory: Path) -> None:
    """Remove the marker before a checkpoint directory is written again (a resumed run
    reaching the step of a checkpoint left behind): until it is sealed anew, it is not
    complete."""
    removed = False
    for name in (CHECKPOINT_MARKER, CHECKPOINT_MARKER_TMP):
        path = directory / name
        if path.exists():
            path.unlink()
            removed = True
    if removed:
        _fsync(directory)


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint directory holds if it is complete (see the module docstring),
    else None."""
    try:
        marker = json.loads((path / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
        listed = marker["files"]
        if not all(name in listed for name in CHECKPOINT_FILES):
            return None
        for name, size in listed.items():
            if (path / name).stat().st_size != size:
                return None
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        return int(state.get("global_step", marker["step"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        # no marker, a listed file gone, or a file that does not parse
        return None


def find_resumable_checkpoint(checkpoints_dir: Path) -> tuple[Path | None, int, list[Path]]:
    """The newest complete `checkpoint-<step>` in `checkpoints_dir` as (path, step), or
    (None, 0), plus the incomplete ones newer than it."""
    candidates = []
    if checkpoints_dir.is_dir():
        for path in checkpoints_dir.glob("checkpoint-*"):
            suffix = path.name.removeprefix("checkpoint-")
            if path.is_dir() and suffix.isdigit():
                candidates.append((int(suffix), path))
    skipped = []
    for _, path in sorted(candidates, reverse=True):
        step = checkpoint_step(path)
        if step is not None:
            return path, step, skipped
        skipped.append(path)
    return None, 0, skipped


# ---------------------------------------------------------------------------------------------
# The callback between the Trainer and the hooks
# ---------------------------------------------------------------------------------------------


def _make_callback(hooks: TrainingHooks):
    from transformers import TrainerCallback

    class HooksCallback(TrainerCallback):
        """Forwards progress to the hooks and turns `should_stop()` into a Trainer stop."""

        def __init__(self) -> None:
            self.cancelled_at: int | None = None
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

        def on_substep_end(self, args, state, control, **kwargs):
            self._check_stop(state, control, step_end=False)

        def on_step_end(self, args, state, control, **kwargs):
            self._check_stop(state, control, step_end=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
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


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _fault_point(output_dir: str | Path, point: str) -> None:
    """``LORACLE_FAULT_KILL_IN_CHECKPOINT=N[:point]``: SIGKILL the process at `point` of
    writing checkpoint N, once per run directory. Points: ``mid-write`` (the default: adapter,
    optimizer and scheduler written; RNG and trainer state not yet) and ``before-marker``
    (everything the Trainer writes is on disk and the temporary marker too, but it is not
    renamed into place). Test-only; unset in production."""
    value = os.environ.get("LORACLE_FAULT_KILL_IN_CHECKPOINT")
    if not value:
        return
    target, _, at = value.partition(":")
    done = Path(output_dir).with_name(".fault-injected")
    if (
        Path(output_dir).name == f"checkpoint-{target}"
        and (at or "mid-write") == point
        and not done.exists()
    ):
        done.touch()
        os.kill(os.getpid(), signal.SIGKILL)


def _ensure_owner(hooks: TrainingHooks, what: str) -> None:
    if not hooks.owns_run():
        raise LeaseLost(f"another process owns this run now; {what} not written")


def _trainer_class(trainer: type, hooks: TrainingHooks) -> type:
    """The Trainer, with checkpoints sealed by a completion marker (see the module
    docstring), written only while this process owns the run (`hooks.owns_run`), and the
    fault-injection points of `_fault_point`."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

    class LoracleTrainer(trainer):  # type: ignore[misc, valid-type]
        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            run_dir = Path(self._get_output_dir(trial=trial))
            folder = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            # A process that lost its lease (paused past it) must not unseal, overwrite or
            # rotate away the checkpoints of the process that took the job over.
            _ensure_owner(hooks, folder.name)
            if self.args.should_save and folder.is_dir():
                unseal_checkpoint(folder)
            # The Trainer rotates old checkpoints out at the end of its save; that must wait
            # for the seal, or with checkpoint_limit=1 a crash between the two would leave no
            # complete checkpoint at all (and with any limit, an old checkpoint could be
            # deleted before the new one's data is on the disk). So its rotation is off
            # during the save, and done here after the seal, with the Trainer's arguments.
            limit = self.args.save_total_limit
            self.args.save_total_limit = None
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = limit
            if not self.args.should_save:  # not the saving process (distributed runs)
                return
            _ensure_owner(hooks, f"the seal of {folder.name}")
            seal_checkpoint(
                folder,
                self.state.global_step,
                before_rename=lambda: _fault_point(folder, "before-marker"),
            )
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

        def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
            super()._save_optimizer_and_scheduler(output_dir)
            _fault_point(output_dir, "mid-write")

    return LoracleTrainer


def _training_arguments(plan: TrainingPlan, device: str, checkpoints_dir: Path):
    from transformers import TrainingArguments

    scheduler = plan.lr_scheduler
    if scheduler == "constant" and plan.warmup_ratio > 0:
        scheduler = "constant_with_warmup"
    return TrainingArguments(
        output_dir=str(checkpoints_dir),
        num_train_epochs=plan.epochs,
        max_steps=plan.max_steps or -1,
        per_device_train_batch_size=plan.micro_batch_size,
        per_device_eval_batch_size=plan.micro_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        learning_rate=plan.learning_rate,
        lr_scheduler_type=scheduler,
        warmup_steps=plan.warmup_ratio,  # below 1: a fraction of the total steps
        optim=modeling.TRAINER_OPTIM[plan.optimizer],
        bf16=plan.precision == "bf16",
        fp16=plan.precision == "fp16",
        gradient_checkpointing=plan.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        save_strategy="steps" if plan.checkpoint_steps else "no",
        save_steps=plan.checkpoint_steps or 500,
        save_total_limit=plan.checkpoint_limit,
        logging_strategy="steps",
        logging_steps=plan.logging_steps,
        eval_strategy="no",
        seed=plan.seed,
        data_seed=plan.seed,
        report_to=[],
        disable_tqdm=True,
        use_cpu=device == "cpu",
        # Tokenized examples are in memory; worker processes would only add start-up time.
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
        remove_unused_columns=False,
        # Counts attention_mask.sum() per micro-batch: a device-to-host sync each time.
        include_num_input_tokens_seen="non_padding",
    )


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


def run_training(
    plan: TrainingPlan, hooks: TrainingHooks | None = None, resume: bool = True
) -> TrainingResult:
    """Run one plan to the end (or to a cancel) and return what happened.

    Raises `DataFileError` for unusable data, `ModelSourceError` for a refused model, and lets
    library errors (out of memory, a broken checkpoint) propagate: the caller records them.
    """
    import transformers
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback

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
    output_dir = plan.output_dir
    checkpoints_dir = output_dir / CHECKPOINTS_DIRNAME
    output_dir.mkdir(parents=True, exist_ok=True)
    if not resume and checkpoints_dir.exists():
        shutil.rmtree(checkpoints_dir)

    monitor = MemoryMonitor(device).start()
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
        evaluation = (
            data.tokenize_file(plan.validation_file, tokenizer, plan.seq_len).examples
            if plan.validation_file
            else None
        )

        callback = _make_callback(hooks)
        trainer = _trainer_class(Trainer, hooks)(
            model=model,
            args=_training_arguments(plan, device, checkpoints_dir),
            train_dataset=train.examples,
            eval_dataset=evaluation,
            data_collator=data.PadCollator(tokenizer.pad_token_id),
            optimizers=(modeling.build_optimizer(model, plan), None),
            callbacks=[callback],
        )
        # With tqdm off the Trainer prints every log dict to stdout; the hooks report instead.
        trainer.remove_callback(PrinterCallback)

        hooks.on_event(
            "started",
            {
                "device": device,
                "precision": plan.precision,
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
            find_resumable_checkpoint(checkpoints_dir) if resume else (None, 0, [])
        )
        for path in incomplete:
            warn(f"checkpoint: {path.name} is incomplete (interrupted write) and was skipped")
        if checkpoint is not None:
            safety.check_checkpoint(checkpoint)
            hooks.on_event("resumed", {"step": resumed_from, "checkpoint": str(checkpoint)})
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        eval_loss = None
        if evaluation and callback.cancelled_at is None:
            eval_loss = float(trainer.evaluate()["eval_loss"])
    finally:
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
        status="cancelled" if callback.cancelled_at is not None else "succeeded",
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
    if result.status == "cancelled":
        hooks.on_event("cancelled", {"step": result.steps})
        return result

    result.artifacts.update(artifacts.artifact_paths(output_dir))
    metrics = result.model_dump(mode="json", exclude={"artifacts"})
    metrics["estimate"] = plan.estimate
    metrics["optimizer_groups"] = optimizer_groups(trainer.optimizer, model)
    _ensure_owner(hooks, "the adapter")
    artifacts.write_adapter(
        model,
        output_dir,
        plan=artifacts.plan_record(plan, requested=requested, device=device, warnings=warnings),
        metrics=metrics,
        steps=[entry.step for entry in losses],
        losses=[entry.loss for entry in losses],
    )
    hooks.on_event(
        "finished", {"step": result.steps, "final_loss": result.final_loss, **result.artifacts}
    )
    return result
