"""The record a finished run leaves next to its adapter, and the atomic write that publishes it.

`output_dir/adapter/` holds, once a run succeeds:

- `adapter_config.json`, `adapter_model.safetensors`: the adapter (`PeftModel.from_pretrained`).
- `plan.json`: the command that reproduces the run, the resolved plan (every hyperparameter),
  the plan as requested, derived switches, device, warnings and library versions.
- `metrics.json`: per-step loss and learning rate, final loss, tokens/s, measured peak memory
  and the advisor's estimate from the plan (if any); with a validation file, `eval_loss` and
  `comparison`, the base model against the adapter on it (`worker.evaluation`).
- `loss.png`: training loss against optimizer step; with a validation file, the validation
  loss at each evaluation beside it, and the base model's validation loss as a line.

The directory is written under a temporary name in `output_dir` and moved into place with
`os.replace`, so a reader sees either the previous complete adapter or the new complete one,
never half of one.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from loracle.plan import TrainingPlan

ADAPTER_DIRNAME = "adapter"
PLAN_FILE, METRICS_FILE, LOSS_PLOT = "plan.json", "metrics.json", "loss.png"
REPRODUCE_COMMAND = "python -m worker train --plan plan.json"
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")


def library_versions() -> dict[str, str | None]:
    """Versions of python and the training stack (None for a library not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def plan_record(
    plan: TrainingPlan, *, requested: TrainingPlan, device: str, warnings: list[str]
) -> dict[str, Any]:
    """The content of plan.json. `plan` is the resolved plan; its `plan` key alone is a valid
    plan, and `load_plan` accepts the whole record."""
    return {
        "command": REPRODUCE_COMMAND,
        "plan": plan.model_dump(mode="json"),
        "requested": requested.model_dump(mode="json", exclude_unset=True),
        "derived": {
            "ideas": sorted(plan.ideas),
            "quantize_4bit": plan.quantize_4bit,
            "use_dora": plan.use_dora,
            "use_loraplus": plan.use_loraplus,
        },
        "device": device,
        "warnings": warnings,
        "versions": library_versions(),
    }


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def loss_figure(
    steps: list[int],
    losses: list[float],
    validation: list[tuple[int, float]] | None = None,
    base_loss: float | None = None,
) -> Any:
    """A matplotlib Figure of loss against optimizer step: the training curve, the validation
    loss at each evaluation (`(step, loss)` points) and the base model's validation loss as a
    dotted horizontal line, each labelled. On the Agg canvas: no pyplot, no display, no global
    backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(steps, losses, marker="." if len(steps) < 50 else None, label="training")
    if validation:
        axes.plot(
            [s for s, _ in validation],
            [v for _, v in validation],
            marker="o",
            linestyle="--" if len(validation) > 1 else "none",
            color="tab:orange",
            label="validation (adapter)",
        )
    if base_loss is not None:
        axes.axhline(
            base_loss, color="tab:gray", linestyle=":", label="validation, base model (no adapter)"
        )
    if validation or base_loss is not None:
        axes.legend(loc="upper right", fontsize="small")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_losses(
    path: Path,
    steps: list[int],
    losses: list[float],
    validation: list[tuple[int, float]] | None = None,
    base_loss: float | None = None,
) -> None:
    """Write `loss_figure` as a PNG."""
    loss_figure(steps, losses, validation, base_loss).savefig(path)


def publish_dir(output_dir: Path, name: str, fill: Callable[[Path], None]) -> Path:
    """Build `output_dir/name` atomically: `fill` writes into a temporary directory in
    `output_dir` (same filesystem), which then replaces `output_dir/name`.

    An existing `name` is first renamed aside and removed after the swap; a crash between the
    two renames leaves it under `.{name}-old-*`. A failing `fill` leaves `name` untouched.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-tmp-", dir=output_dir))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the adapter is meant to be read
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{name}-old-", dir=output_dir))
        os.replace(final, old / name)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_adapter(
    model,
    output_dir: Path,
    *,
    plan: dict[str, Any],
    metrics: dict[str, Any],
    steps: list[int],
    losses: list[float],
    state_dict: dict[str, Any] | None = None,
    validation: list[tuple[int, float]] | None = None,
    base_loss: float | None = None,
) -> dict[str, str]:
    """Publish `output_dir/adapter/` (adapter weights and the run record) atomically and return
    the paths of what it holds. `state_dict`: the model's full state when its own parameters
    are shards (FSDP), else None. `validation` and `base_loss` go to loss.png
    (`plot_losses`)."""

    def fill(directory: Path) -> None:
        if state_dict is None:
            model.save_pretrained(str(directory))
        else:
            model.save_pretrained(str(directory), state_dict=state_dict)
        write_json(directory / PLAN_FILE, plan)
        write_json(directory / METRICS_FILE, metrics)
        plot_losses(directory / LOSS_PLOT, steps, losses, validation, base_loss)

    publish_dir(output_dir, ADAPTER_DIRNAME, fill)
    return artifact_paths(output_dir)


def artifact_paths(output_dir: Path) -> dict[str, str]:
    """Where a successful run's files are (whether or not they exist yet)."""
    adapter = output_dir / ADAPTER_DIRNAME
    return {
        "adapter_dir": str(adapter),
        "plan": str(adapter / PLAN_FILE),
        "metrics": str(adapter / METRICS_FILE),
        "loss_plot": str(adapter / LOSS_PLOT),
    }
