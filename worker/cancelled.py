"""What a cancelled run keeps: its partial adapter and its last checkpoint, as artifacts.

A cancel used to leave nothing a user could download: no adapter, and checkpoints only on the
worker's disk. Now `keep` publishes `output_dir/adapter/` (atomically, like a finished run's)
with:

- the adapter as trained up to the step the run stopped at (`adapter_config.json`,
  `adapter_model.safetensors`), with `plan.json`, `metrics.json` (status "cancelled") and
  `loss.png`, when at least one step was taken;
- `checkpoint-<step>.tar`: the newest complete checkpoint (adapter, optimizer, scheduler, RNG
  and trainer state), one file to download and resume from (`resume_from_checkpoint` on the
  unpacked folder). Uncompressed: safetensors and torch's files do not shrink, and the copy is
  one sequential read and write of the checkpoint, seconds for a LoRA adapter's state.

The API lists and serves them as the job's artifacts (GET /v1/jobs/{id}/artifacts).
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from worker import artifacts
from worker.checkpoints import find_resumable_checkpoint


def keep(
    model: Any,
    output_dir: Path,
    checkpoints_dir: Path,
    *,
    step: int,
    plan: dict[str, Any],
    metrics: dict[str, Any],
    steps: list[int],
    losses: list[float],
) -> dict[str, Any]:
    """Publish what a run cancelled at `step` keeps (see the module docstring). Returns what
    was kept: `adapter_step` (None without a step taken), `checkpoint` (the archive's name)
    and `checkpoint_step` (None without a complete checkpoint), and `files`."""
    checkpoint, checkpoint_step, _ = find_resumable_checkpoint(checkpoints_dir)
    archive = f"{checkpoint.name}.tar" if checkpoint is not None else None
    if step <= 0 and checkpoint is None:
        return {"adapter_step": None, "checkpoint": None, "checkpoint_step": None, "files": []}

    def fill(directory: Path) -> None:
        if step > 0:
            model.save_pretrained(str(directory))
            artifacts.write_json(directory / artifacts.PLAN_FILE, plan)
            artifacts.write_json(directory / artifacts.METRICS_FILE, metrics)
            if losses:
                artifacts.plot_losses(directory / artifacts.LOSS_PLOT, steps, losses)
        if checkpoint is not None and archive is not None:
            with tarfile.open(directory / archive, "w") as tar:
                tar.add(checkpoint, arcname=checkpoint.name)

    folder = artifacts.publish_dir(output_dir, artifacts.ADAPTER_DIRNAME, fill)
    return {
        "adapter_step": step if step > 0 else None,
        "checkpoint": archive,
        "checkpoint_step": checkpoint_step if checkpoint is not None else None,
        "files": sorted(p.name for p in folder.iterdir() if p.is_file()),
    }


def outcome(kept: dict[str, Any]) -> str:
    """What a cancelled job kept, in words: the end of its cancel's messages."""
    parts = []
    if kept.get("adapter_step") is not None:
        parts.append(f"the adapter of step {kept['adapter_step']}")
    if kept.get("checkpoint"):
        parts.append(f"{kept['checkpoint']} (step {kept['checkpoint_step']}, to resume from)")
    if not parts:
        return "nothing to keep (no step was taken)"
    return "kept " + " and ".join(parts) + " as the job's artifacts"
