"""Checkpoints are complete or ignored (must-hold 3), shown on the training code itself:
a real Trainer run, a real SIGKILL between the Trainer's files and the completion marker,
and checkpoints damaged the ways a crash or a full disk damages them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from loracle.plan import load_plan
from tests.utils.builders import plan_dict
from tests.utils.service import ROOT
from worker.checkpoints import (
    CHECKPOINT_FILES,
    CHECKPOINT_MARKER,
    CHECKPOINT_MARKER_TMP,
    checkpoint_step,
    find_resumable_checkpoint,
)
from worker.training import run_training

RUN = """
import sys
from tests.utils.builders import plan_dict
from loracle.plan import load_plan
from worker.training import run_training
model, data, out = sys.argv[1:4]
run_training(load_plan(plan_dict(model, data, out, max_steps=6, checkpoint_steps=2,
                                 checkpoint_limit=1)))
"""


def _run_killed(tiny_model: Path, train_file: Path, out: Path, fault: str) -> None:
    env = {**os.environ, "LORACLE_FAULT_KILL_IN_CHECKPOINT": fault, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(tiny_model), str(train_file), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def test_every_checkpoint_is_sealed_and_the_marker_lists_its_files(
    tiny_model: Path, train_file: Path, tmp_path: Path
):
    plan = load_plan(plan_dict(tiny_model, train_file, tmp_path, max_steps=4, checkpoint_steps=2))
    assert run_training(plan).status == "succeeded"
    checkpoints = sorted((tmp_path / "checkpoints").glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == ["checkpoint-2", "checkpoint-4"]
    for folder in checkpoints:
        marker = json.loads((folder / CHECKPOINT_MARKER).read_text())
        assert marker["step"] == int(folder.name.split("-")[1])
        assert set(CHECKPOINT_FILES) <= set(marker["files"])
        on_disk = {
            p.relative_to(folder).as_posix(): p.stat().st_size
            for p in folder.rglob("*")
            if p.is_file() and p.name != CHECKPOINT_MARKER
        }
        assert marker["files"] == on_disk
        assert not (folder / CHECKPOINT_MARKER_TMP).exists()
    assert find_resumable_checkpoint(tmp_path / "checkpoints")[:2] == (checkpoints[1], 4)


def test_damaged_checkpoints_are_not_resumed(tiny_model: Path, train_file: Path, tmp_path: Path):
    plan = load_plan(plan_dict(tiny_model, train_file, tmp_path, max_steps=2, checkpoint_steps=2))
    run_training(plan)
    good = tmp_path / "checkpoints" / "checkpoint-2"
    assert checkpoint_step(good) == 2

    def copy(name: str) -> Path:
        folder = good.with_name(name)
        subprocess.run(["cp", "-a", str(good), str(folder)], check=True)
        return folder

    # A file cut short after the seal (a full disk, a torn copy): its size no longer matches.
    torn = copy("checkpoint-3")
    with (torn / "optimizer.pt").open("r+b") as fh:
        fh.truncate(10)
    # Killed between the temporary marker and its rename.
    unrenamed = copy("checkpoint-4")
    (unrenamed / CHECKPOINT_MARKER).rename(unrenamed / CHECKPOINT_MARKER_TMP)
    # A marker that is not JSON, and one that lists no trainer state.
    (copy("checkpoint-5") / CHECKPOINT_MARKER).write_text("{")
    listless = copy("checkpoint-6")
    marker = json.loads((listless / CHECKPOINT_MARKER).read_text())
    del marker["files"]["trainer_state.json"]
    (listless / CHECKPOINT_MARKER).write_text(json.dumps(marker))
    # Every file the Trainer writes, complete and parsing, but never sealed.
    unsealed = copy("checkpoint-7")
    (unsealed / CHECKPOINT_MARKER).unlink()

    path, step, skipped = find_resumable_checkpoint(tmp_path / "checkpoints")
    assert (path, step) == (good, 2)
    assert [p.name for p in skipped] == [f"checkpoint-{n}" for n in (7, 6, 5, 4, 3)]


def test_killed_before_the_marker_with_a_limit_of_one_keeps_the_previous_checkpoint(
    tiny_model: Path, train_file: Path, tmp_path: Path
):
    # checkpoint_limit=1: the Trainer would delete checkpoint-2 as soon as checkpoint-4 is
    # written. Rotation waits for the seal, so at the kill checkpoint-2 is still there.
    _run_killed(tiny_model, train_file, tmp_path, "4:before-marker")
    checkpoints = tmp_path / "checkpoints"
    half = checkpoints / "checkpoint-4"
    assert json.loads((half / "trainer_state.json").read_text())["global_step"] == 4
    assert (half / CHECKPOINT_MARKER_TMP).is_file() and not (half / CHECKPOINT_MARKER).exists()
    assert checkpoint_step(checkpoints / "checkpoint-2") == 2
    assert find_resumable_checkpoint(checkpoints)[:2] == (checkpoints / "checkpoint-2", 2)

    plan = plan_dict(
        tiny_model, train_file, tmp_path, max_steps=6, checkpoint_steps=2, checkpoint_limit=1
    )
    result = run_training(load_plan(plan))
    assert (result.status, result.resumed_from_step, result.steps) == ("succeeded", 2, 6)
    assert any("checkpoint-4 is incomplete" in w for w in result.warnings)
    assert [p.name for p in checkpoints.glob("checkpoint-*")] == ["checkpoint-6"]
    assert checkpoint_step(checkpoints / "checkpoint-6") == 6
