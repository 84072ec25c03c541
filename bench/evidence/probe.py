"""Memory of one variant, measured in a fresh process.

Why a process of its own: on CPU the worker measures peak memory as the growth of the
process's resident set over its value at the start of the run. In a process that already ran
a training run, freed memory stays with the allocator and the next run's growth reads near
zero; a fresh process per variant starts every measurement from the same place (Python,
torch, transformers and peft imported, nothing trained). The benchmark spawns each probe in
a fresh interpreter (`bench.evidence.pipeline._probe_all`), as the command below does.

`python -m bench.evidence.probe PLAN HELD_OUT_TEXTS` prints one JSON object: the worker's
`peak_memory`, the bytes of the model's tensors as built by the worker (`runs.tensor_bytes`),
and the held-out language-modelling loss of the base as this variant stores it (adapters off):
for QLoRA, what NF4 did to the pretrained model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def base_lm_loss(model, tokenizer, held_texts: list[str], chunks: int = 32) -> float | None:
    """Held-out loss (nats/token) of the base with the adapters switched off, on the
    standard-library files the base never trained on."""
    try:
        from bench.evidence.base import _chunks, held_out_loss

        held = _chunks(held_texts, tokenizer, 128)[:chunks]
        with model.disable_adapter():
            return round(held_out_loss(model, held, 16), 4)
    except Exception as exc:  # a figure for the report, never a reason to lose the probe
        print(f"base_lm_loss unavailable: {exc!r}", file=sys.stderr)
        return None


def probe(plan_path: Path, held_out_path: Path) -> dict:
    """`held_out_path`: a JSON list of the base's held-out files' texts (read once by the
    benchmark rather than once per probe)."""
    from bench.evidence.runs import capture_model, tensor_bytes
    from loracle.plan import load_plan
    from worker.training import run_training

    plan = load_plan(plan_path)
    with capture_model() as box:
        result = run_training(plan, resume=False)
    return {
        "peak_memory": result.peak_memory.model_dump(),
        "model_bytes": tensor_bytes(box["model"]),
        "trainable_parameters": result.trainable_parameters,
        "steps": result.steps,
        "base_lm_loss": base_lm_loss(
            box["model"], box["tokenizer"], json.loads(held_out_path.read_text(encoding="utf-8"))
        ),
    }


def main() -> None:
    # The last line of stdout is the answer; libraries may print before it.
    print(json.dumps(probe(Path(sys.argv[1]), Path(sys.argv[2]))))


if __name__ == "__main__":
    main()
