"""One fine-tuning run of the benchmark: the worker's `run_training`, plus held-out evaluation
every few optimizer steps.

`run_training` measures the validation loss once, at the end; "steps to reach a target eval
loss" needs it along the way. Its hooks see every logged step but not the model, so
`capture_model` wraps `worker.modeling.load_model_and_tokenizer` (the one place the worker
builds a model) for the duration of the run and hands the model it built to the hooks, which
evaluate it between optimizer steps. Training itself is untouched: the evaluation runs under
`torch.no_grad()` in eval mode, draws no random numbers (adapters have dropout 0 here), and
puts the model back in training mode. Its time is measured and taken out of the step times.

(A `TrainingHooks` method that receives the model, or extra `TrainerCallback`s passed through
the hooks, would make the wrapping unnecessary; see the benchmark's report.)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loracle.plan import TrainingPlan
from worker import modeling
from worker.training import TrainingHooks, run_training


@contextlib.contextmanager
def capture_model() -> Iterator[dict[str, Any]]:
    """While active, every model the worker builds is also put in the yielded dict
    (`model`, `tokenizer`)."""
    original = modeling.load_model_and_tokenizer
    box: dict[str, Any] = {}

    def load_and_keep(plan, device):
        model, tokenizer = original(plan, device)
        box.update(model=model, tokenizer=tokenizer)
        return model, tokenizer

    modeling.load_model_and_tokenizer = load_and_keep
    try:
        yield box
    finally:
        modeling.load_model_and_tokenizer = original


def tensor_bytes(model) -> dict[str, int]:
    """Bytes the model's tensors hold, measured on the tensors: `weights` (frozen parameters
    and buffers as stored, with bitsandbytes' 4-bit packing and its quantization statistics),
    `adapted_linears` (the part of `weights` in the linear layers that carry adapters: what
    QLoRA quantizes) and `trainable` (adapter parameters; their gradients and AdamW's two
    moments are as large again, each, in fp32).

    `adapted_linears_parameters` counts the weights of those layers as the model defines
    them, packed or not: twice it is their size in 16 bits, the precision a GPU run of LoRA
    keeps them in, which a CPU run (fp32) does not show."""
    weights = trainable = 0
    for param in model.parameters():
        if param.requires_grad:
            trainable += _param_bytes(param)
        else:
            weights += _param_bytes(param)
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    adapted_layers = [
        module
        for module in model.modules()
        if hasattr(module, "base_layer") and hasattr(module, "lora_A")
    ]
    adapted = sum(_param_bytes(module.base_layer.weight) for module in adapted_layers)
    adapted_parameters = sum(
        module.base_layer.in_features * module.base_layer.out_features for module in adapted_layers
    )
    return {
        "weights": weights,
        "adapted_linears": adapted,
        "adapted_linears_parameters": adapted_parameters,
        "trainable": trainable,
    }


def _param_bytes(param) -> int:
    size = param.numel() * param.element_size()
    state = getattr(param, "quant_state", None)
    return size + (_quant_state_bytes(state) if state is not None else 0)


def _quant_state_bytes(state) -> int:
    """absmax (and, with double quantization, its own absmax and code) of a 4-bit weight."""
    total = 0
    for name in ("absmax", "code"):
        tensor = getattr(state, name, None)
        if tensor is not None:
            total += tensor.numel() * tensor.element_size()
    nested = getattr(state, "state2", None)
    if nested is not None:
        total += _quant_state_bytes(nested)
    return total


class EvalHooks(TrainingHooks):
    """Evaluates the captured model at step 0 (the base: adapters start as the identity),
    every `every` steps and at the last step; times every optimizer step."""

    def __init__(self, box: dict[str, Any], evaluate, every: int) -> None:
        self.box = box
        self.evaluate = evaluate
        self.every = every
        self.evals: list[dict[str, Any]] = []
        self.train_losses: list[tuple[int, float]] = []
        self.step_seconds: list[float] = []
        self.step_cpu_seconds: list[float] = []
        self.eval_seconds = 0.0
        self.model_bytes: dict[str, int] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._mark: float | None = None
        self._cpu_mark = 0.0

    def _eval(self, step: int) -> None:
        started = time.perf_counter()
        self.evals.append({"step": step, **self.evaluate(self.box["model"])})
        if step > 0:  # the step-0 evaluation runs before the Trainer's clock starts
            self.eval_seconds += time.perf_counter() - started

    def on_event(self, type: str, data: dict[str, Any]) -> None:
        self.events.append((type, data))
        if type == "started":
            self.model_bytes = tensor_bytes(self.box["model"])
            self._eval(0)
            self._mark, self._cpu_mark = time.perf_counter(), time.process_time()

    def on_progress(self, step, total_steps, loss, learning_rate, tokens_per_second, eta):
        now, cpu = time.perf_counter(), time.process_time()
        if self._mark is not None:
            # From the end of the previous step's callbacks to this step's log: the step
            # itself (forward, backward, optimizer), without any evaluation. Wall clock, and
            # the process's CPU time, which a busy shared machine inflates much less.
            self.step_seconds.append(now - self._mark)
            self.step_cpu_seconds.append(cpu - self._cpu_mark)
        self.train_losses.append((step, loss))
        if step % self.every == 0 or step == total_steps:
            self._eval(step)
        self._mark, self._cpu_mark = time.perf_counter(), time.process_time()


def train_and_evaluate(
    plan: TrainingPlan, evaluate_factory, every: int
) -> tuple[dict[str, Any], Any]:
    """Run `plan` through the worker's `run_training` with held-out evaluation every `every`
    steps. `evaluate_factory(tokenizer)` returns the evaluation function. Returns the run's
    figures and the worker's `TrainingResult`."""
    with capture_model() as box:
        hooks = _LazyEvalHooks(box, evaluate_factory, every)
        result = run_training(plan, hooks, resume=False)
    if result.status != "succeeded":
        raise RuntimeError(f"run {plan.output_dir} ended {result.status}")

    def median(values: list[float]) -> float | None:
        return sorted(values)[len(values) // 2] if values else None

    figures = {
        "evals": hooks.evals,
        "train_loss": hooks.train_losses,
        "steps": result.steps,
        "trainable_parameters": result.trainable_parameters,
        "all_parameters": result.all_parameters,
        "model_bytes": hooks.model_bytes,
        "median_step_seconds": median(hooks.step_seconds),
        "median_step_cpu_seconds": median(hooks.step_cpu_seconds),
        "train_seconds": result.runtime_seconds - hooks.eval_seconds,
        "eval_seconds": hooks.eval_seconds,
        "worker_eval_loss": result.eval_loss,
        "optimizer": result.optimizer,
        "precision": result.precision,
        "warnings": result.warnings,
        "base_layers": next(
            (d.get("base_layers") for t, d in hooks.events if t == "started"), None
        ),
    }
    return figures, result


class _LazyEvalHooks(EvalHooks):
    """EvalHooks whose evaluation function is built from the worker's tokenizer once the model
    exists (so held-out data is tokenized exactly as the worker tokenized the training data)."""

    def __init__(self, box: dict[str, Any], factory, every: int) -> None:
        super().__init__(box, None, every)
        self.factory = factory

    def on_event(self, type: str, data: dict[str, Any]) -> None:
        if type == "started" and self.evaluate is None:
            self.evaluate = self.factory(self.box["tokenizer"])
        super().on_event(type, data)


def make_plan(
    model_dir: Path, task: dict[str, Any], output_dir: Path, **fields: Any
) -> TrainingPlan:
    from loracle.plan import load_plan

    return load_plan(
        {
            "model": str(model_dir),
            "train_file": task["train_file"],
            "validation_file": task["eval_file"],
            "output_dir": str(output_dir),
            **fields,
        }
    )
