"""How much the benchmark runs: the full mode, which publishes, and the quick one, the same
pipeline small enough for the test suite."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.evidence.base import BaseSpec
from bench.evidence.variants import VARIANTS


@dataclass(frozen=True)
class Mode:
    """How much the benchmark runs. Time grows with len(seeds) x variants x steps, plus the
    sweep and one memory probe per variant."""

    name: str
    base: BaseSpec
    steps: int
    batch_size: int
    eval_every: int
    eval_rows: int
    seeds: tuple[int, ...]
    learning_rate: float
    sweep: tuple[float, ...]
    """Learning rates of the sweep (the base rate among them)."""
    probe_steps: int
    finalists: int = 2
    """Rates of the sweep, besides the base rate, that run on every seed (the best of the
    first seed): each method's best rate is picked on the mean over seeds among them."""
    trace_7b: bool = True
    """Also trace Llama-2-7B's LoRA and QLoRA steps with the worker's tracer (about a minute,
    cached)."""
    lora_rank: int = 16
    variants: tuple[str, ...] = field(default=VARIANTS)

    @property
    def train_rows(self) -> int:
        return self.steps * self.batch_size  # one pass: no row is seen twice


FULL_BASE = BaseSpec()
# A quarter of the full base's compute per token and 300 steps: built in well under a minute,
# so that a quick run, base build included, fits the test suite's budget.
QUICK_BASE = BaseSpec(
    vocab_size=1024,
    hidden_size=128,  # bitsandbytes' CPU NF4 kernels need in_features of at least 64
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    steps=300,
    warmup_steps=20,
)
MODES = {
    "full": Mode(
        name="full",
        base=FULL_BASE,
        steps=150,
        batch_size=16,
        # Evaluating 256 rows took 40% of a run's time at every 10 steps (measured); every
        # 15 keeps 11 points per curve for the interpolated steps-to-target and leaves
        # room in the 30 minutes for the wider sweep.
        eval_every=15,
        eval_rows=256,
        seeds=(0, 1, 2),
        learning_rate=2e-3,
        sweep=(2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3),
        probe_steps=5,
    ),
    # The same pipeline, small enough to run end to end in the test suite (a smaller base,
    # 40 steps, 2 seeds, 3 rates, no 7B trace). Its figures are a preview, not evidence.
    "quick": Mode(
        name="quick",
        base=QUICK_BASE,
        steps=40,
        batch_size=16,
        eval_every=10,
        eval_rows=128,
        seeds=(0, 1),
        learning_rate=2e-3,
        sweep=(1e-3, 2e-3, 4e-3),
        finalists=1,
        probe_steps=2,
        trace_7b=False,
    ),
}
SWEPT = ("lora", "loraplus")
"""The methods whose learning rate the sweep tunes."""
