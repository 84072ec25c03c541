"""The baseline of bench/training.py: the same tiny model, peft config and Trainer
settings as a loracle job, trained by a plain script with no service around it.

    python -m bench.bare_train PLAN.json   -> prints {"tokens_per_second": ...}
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from loracle import recipe


def main(plan_path: str) -> None:
    import transformers
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback

    from loracle.plan import load_plan
    from worker import data, modeling

    # The device the worker would pick on this machine: a GPU job against a CPU script
    # would measure the hardware, not the service.
    device = modeling.detect_device()
    plan, _ = modeling.resolve_plan(load_plan(plan_path), device)
    transformers.set_seed(plan.seed)
    tokenizer = AutoTokenizer.from_pretrained(plan.model)
    model = AutoModelForCausalLM.from_pretrained(
        plan.model, **recipe.model_load_kwargs(plan, device)
    )
    model = get_peft_model(model, recipe.make_lora_config(plan))
    train = data.tokenize_file(plan.train_file, tokenizer, plan.seq_len)

    class Clock(TrainerCallback):
        """The same window the worker measures: from train begin to train end."""

        start = end = 0.0

        def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            Clock.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            Clock.end = time.perf_counter()

    trainer = Trainer(
        model=model,
        args=recipe.training_arguments(plan, device, Path(plan.output_dir) / "bare"),
        train_dataset=train.examples,
        data_collator=data.PadCollator(tokenizer.pad_token_id),
        callbacks=[Clock()],
    )
    trainer.train()
    elapsed = Clock.end - Clock.start
    tokens = int(trainer.state.num_input_tokens_seen)
    print(json.dumps({"tokens": tokens, "seconds": elapsed, "tokens_per_second": tokens / elapsed}))


if __name__ == "__main__":
    main(sys.argv[1])
