"""The checkpoint check: the Trainer's real resume files pass, and pickles that would run
code are refused without running it, however they spell the code they name."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest

from loracle.plan import load_plan
from tests.utils.builders import plan_dict
from worker.safety import RESUME_FILES, CheckpointRefused, check_checkpoint, check_file
from worker.training import run_training


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


def open_for_writing_hidden_behind_an_allowed_name(target: Path) -> bytes:
    """A protocol-4 pickle that calls ``builtins.open(target, "w")`` when loaded. It pushes
    "builtins", "open", then "collections", "OrderedDict", pops the last two and only then
    asks for the global: a scan that takes the last two strings it saw reads an allowed
    name."""
    return (
        b"\x80\x04"  # PROTO 4
        + _text("builtins")
        + _text("open")
        + _text("collections")
        + _text("OrderedDict")
        + b"00"  # POP POP
        + b"\x93"  # STACK_GLOBAL
        + _text(str(target))
        + _text("w")
        + b"\x86"  # TUPLE2
        + b"R"  # REDUCE
        + b"."  # STOP
    )


class _Calls:
    def __init__(self, func, *args) -> None:
        self.call = (func, args)

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"optimizer": "adamw_8bit", "combine_with": ["loraplus"], "variant": "qlora"},
        {"optimizer": "sgd", "variant": "dora"},
    ],
    ids=["adamw", "qlora+loraplus-adamw_8bit", "dora-sgd"],
)
def test_the_trainers_own_checkpoints_pass(tmp_path, tiny_model, data_dir, overrides):
    out = tmp_path / "run"
    plan = load_plan(
        plan_dict(
            tiny_model, data_dir / "text.jsonl", out, max_steps=2, checkpoint_steps=2, **overrides
        )
    )
    assert run_training(plan).status == "succeeded"
    checkpoint = out / "checkpoints" / "checkpoint-2"
    present = [name for name in RESUME_FILES if (checkpoint / name).is_file()]
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= set(present)
    check_checkpoint(checkpoint)


def test_a_global_hidden_behind_popped_strings_is_found_and_never_run(tmp_path):
    payload = open_for_writing_hidden_behind_an_allowed_name(tmp_path / "opened-by-pickle")
    # The payload is real: plain unpickling runs it.
    pickle.loads(payload)
    assert (tmp_path / "opened-by-pickle").exists()

    planted = tmp_path / "planted"
    checked = tmp_path / "optimizer.pt"
    checked.write_bytes(open_for_writing_hidden_behind_an_allowed_name(planted))
    with pytest.raises(CheckpointRefused, match=r"builtins\.open") as refused:
        check_file(checked)
    assert "collections.OrderedDict" not in str(refused.value)
    assert not planted.exists()


@pytest.mark.parametrize("name", ["numpy.save", "torch.hub.load", "torch.save"])
def test_a_name_that_only_shares_an_allowed_prefix_is_refused(tmp_path, name):
    import importlib

    module, _, attr = name.rpartition(".")
    func = getattr(importlib.import_module(module), attr)
    path = tmp_path / "scheduler.pt"
    path.write_bytes(pickle.dumps(_Calls(func, {}, str(tmp_path / "written"))))
    with pytest.raises(CheckpointRefused, match="refused without loading it") as refused:
        check_file(path)
    assert attr in str(refused.value)
    assert not (tmp_path / "written").exists()


def test_a_second_pickle_in_the_same_file_is_checked_too(tmp_path):
    planted = tmp_path / "planted"
    path = tmp_path / "rng_state.pth"
    path.write_bytes(pickle.dumps({"fine": 1}) + pickle.dumps(_Calls(open, str(planted), "w")))
    with pytest.raises(CheckpointRefused, match=r"io\.open|builtins\.open"):
        check_file(path)
    assert not planted.exists()


def test_a_torch_archive_whose_data_pickle_runs_code_is_refused(tmp_path):
    import torch

    planted = tmp_path / "planted"
    buffer = io.BytesIO()
    torch.save({"state": _Calls(open, str(planted), "w"), "t": torch.zeros(2)}, buffer)
    assert zipfile.is_zipfile(io.BytesIO(buffer.getvalue()))
    path = tmp_path / "optimizer.pt"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointRefused, match="open"):
        check_file(path)
    assert not planted.exists()
    # The same archive without the call passes: tensors and their storages are allowed.
    buffer = io.BytesIO()
    torch.save({"state": {0: {"exp_avg": torch.zeros(2)}}, "t": torch.zeros(2)}, buffer)
    path.write_bytes(buffer.getvalue())
    check_file(path)


def test_bytes_that_are_no_pickle_are_refused(tmp_path):
    path = tmp_path / "optimizer.pt"
    path.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(CheckpointRefused, match="not a readable pickle"):
        check_file(path)
