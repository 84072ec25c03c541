"""The tracer's hand-written step loop against the worker's real Trainer path.

`trace_memory` runs the Trainer's steps itself (forward with the model's loss, backward,
clipping, the Trainer's optimizer, zero grad) so that it can run them on meta tensors. Here
`worker.training.run_training`, the function jobs run, trains a small random-init model on
this CPU for two optimizer steps with the same `StorageTracker` watching every storage from
the moment `Trainer.train` starts, and a meta-device trace with the CPU's kernels must find
the same peak, kind by kind.

What only the Trainer holds: input batches for longer. It fetches every micro batch of an
optimizer step before the first forward (to count the loss's tokens over the step,
`num_items_in_batch`) and keeps them through the step, and in these runs the first step's
batch was still alive during the second step; the tracer makes each micro batch just before
its forward and drops it after. Plus a few 0-dim tensors (the loss accumulator; AdamW's step
counters, which count here because the run is on the CPU). The batches are token ids, mask
and labels, 24 bytes a token: a few KB here, and under 0.1% of any real step (192 KB for a
micro batch of 4 x 2048 tokens). The test holds the two within 0.5% and requires the
difference to have that sign and at most that size: two steps' batches and 4 KB.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from torch.optim.optimizer import register_optimizer_step_post_hook

from advisor.profile import TrainingSettings
from advisor.variants import combination
from loracle.plan import load_plan
from memtrace.trace import _quant_state_tensors, _state_tensors, trace_memory
from memtrace.tracker import KINDS, StorageTracker
from tests.utils.builders import build_tiny_llama, plan_dict
from worker.training import run_training

SEQ_LEN = 128
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a busy 2-core machine OpenMP's spinning threads make real
    steps several times slower, and the thread count changes no tensor the tracker counts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    # Wide enough that the step is not all rounding: 256 wide, two blocks, bf16.
    return build_tiny_llama(
        tmp_path_factory.mktemp("trainer-model") / "llama",
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
    )


def _write(path: Path, lengths: list[int]) -> Path:
    words = WORDS.split()
    with path.open("w", encoding="utf-8") as fh:
        for i, n in enumerate(lengths):
            text = " ".join(words[(i + j) % len(words)] for j in range(n))
            fh.write(json.dumps({"text": text}) + "\n")
    return path


def _trainer_peak(monkeypatch, plan):
    """Run the worker's training for the plan with the tracker around `Trainer.train`, told
    what the tracer tells it: which storages are frozen weights, adapters, gradients and
    optimizer state."""
    captured: dict[str, StorageTracker] = {}
    original = transformers.Trainer.train

    def train(self, *args, **kwargs):
        model = self.model
        tracker = StorageTracker(count_device="cpu")
        params = list(model.parameters())
        trainable = [p for p in params if p.requires_grad]
        tracker.register([p for p in params if not p.requires_grad], "weights")
        tracker.register(model.buffers(), "weights")
        tracker.register(_quant_state_tensors(model), "weights")
        tracker.register(trainable, "adapter")
        handles = [
            p.register_post_accumulate_grad_hook(lambda p: tracker.mark([p.grad], "gradients"))
            for p in trainable
        ]
        handles.append(
            register_optimizer_step_post_hook(
                lambda optimizer, args, kwargs: tracker.mark(_state_tensors(optimizer), "optimizer")
            )
        )
        captured["tracker"] = tracker
        try:
            with tracker:
                return original(self, *args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()

    monkeypatch.setattr(transformers.Trainer, "train", train)
    result = run_training(plan, resume=False)
    assert result.status == "succeeded" and result.steps == 2
    return captured["tracker"].report(cuda=False), result


CASES = [
    # (variant, combine_with, micro batch, accumulation, checkpointing)
    ("lora", [], 1, 1, False),
    ("lora", [], 1, 1, True),
    ("lora", [], 2, 1, False),  # a padded micro batch: a long row and a short one
    ("lora", [], 1, 2, False),
    ("qlora", [], 1, 1, True),
    ("dora", [], 1, 1, False),
    ("loraplus", [], 1, 1, False),
]


@pytest.mark.parametrize(
    ("variant", "combine_with", "micro_batch", "accumulation", "checkpointing"),
    CASES,
    ids=[f"{c[0]}-b{c[2]}-acc{c[3]}-{'ckpt' if c[4] else 'nockpt'}" for c in CASES],
)
def test_the_real_trainer_step_peaks_where_the_meta_trace_does(
    monkeypatch,
    tmp_path,
    model_dir,
    variant,
    combine_with,
    micro_batch,
    accumulation,
    checkpointing,
):
    if micro_batch > 1:
        # Every micro batch pairs a row longer than seq_len with one of about a third of it:
        # padded to seq_len, with a mask, as the tracer assumes of a batch of several rows.
        data = _write(tmp_path / "train.jsonl", [400, 40])
    else:
        data = _write(tmp_path / "train.jsonl", [400] * 8)  # every row cut to seq_len
    fields = {
        "max_steps": 2,
        "micro_batch_size": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "seq_len": SEQ_LEN,
        "precision": "bf16",
        "optimizer": "adamw",
        "variant": variant,
        "combine_with": combine_with,
        "gradient_checkpointing": checkpointing,
        "lora_rank": 8,
    }
    trainer, result = _trainer_peak(
        monkeypatch, load_plan(plan_dict(model_dir, data, tmp_path / "run", **fields))
    )
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    settings = TrainingSettings(
        seq_len=SEQ_LEN,
        micro_batch_size=micro_batch,
        gradient_accumulation_steps=accumulation,
        gradient_checkpointing=checkpointing,
        lora_rank=8,
        precision="bf16",
        optimizer="adamw",
    )
    meta = trace_memory(
        config,
        settings,
        combination(variant, combine_with),
        lora_dropout=0.0,  # plan_dict's
        device="meta",
        target="cpu",
    )
    assert meta.trainable_params == result.trainable_parameters
    # The Trainer's own inputs and bookkeeping (module docstring): at most this much more.
    batches = 3 * 8 * micro_batch * SEQ_LEN * accumulation
    assert 0 <= trainer.total - meta.peak_bytes <= 2 * batches + 4096, (
        trainer.total,
        meta.peak_bytes,
    )
    assert abs(trainer.total / meta.peak_bytes - 1) <= 0.005
    for kind in KINDS:
        assert abs(trainer.by_kind[kind] - meta.by_kind[kind]) <= 0.005 * meta.peak_bytes, (
            kind,
            trainer.by_kind,
            meta.by_kind,
        )
