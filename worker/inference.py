"""Try an adapter: the same prompts through a job's base model and through its adapter, side by
side (`generate_side_by_side`). Plain code, without Celery or the store: worker/tryout.py runs
it for a try the API stored.

The base is loaded as the run loaded it (worker.modeling.load_for_inference: a QLoRA job's
base in 4-bit NF4 with the run's BitsAndBytesConfig, so the adapter sees the weights it was
trained on), the adapter is attached with peft, and each prompt is generated twice: with the
adapter disabled (`PeftModel.disable_adapter`, the base alone) and with it, each after
seeding torch with the same seed, with the same settings. Greedy (`temperature` 0) is
deterministic; sampling with a seed repeats itself on the same machine and libraries.

Prompts run one at a time, not as a padded batch: a prompt's completion then does not depend
on the other prompts of the try, and the same seed gives the same text whatever else was
asked. The cost is up to 8 x 2 calls of `generate`, each as long as its `max_new_tokens`
(at most 512), small beside the load of the model, which is the bulk of a try's time.

Generation stops at the next token once `request_stop` is called (the consumer is shutting
down) or past the try's deadline, and raises `Stopped`; nothing is kept in memory between
tries.
"""

from __future__ import annotations

import gc
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from loracle.context import context_window
from loracle.plan import TrainingPlan


class PromptTooLong(ValueError):
    """A prompt that does not leave room for `max_new_tokens` in the model's context."""

    def __init__(self, index: int, tokens: int, window: int, max_new_tokens: int) -> None:
        self.limit = window - max_new_tokens
        super().__init__(
            f"prompts.{index} is {tokens} tokens; the model's context is {window} tokens, so "
            f"with max_new_tokens {max_new_tokens} a prompt may have at most {self.limit}: "
            "shorten it or lower max_new_tokens"
        )


class Stopped(RuntimeError):
    """Generation stopped before its end: the consumer is shutting down, or the try's time
    ran out."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Completion(BaseModel):
    prompt: str
    base: str
    adapter: str
    prompt_tokens: int
    base_tokens: int
    adapter_tokens: int


class TryResult(BaseModel):
    """What a try generated, and where the time went."""

    completions: list[Completion]
    device: str
    base_weights: str  # `original`, or `nf4` for a QLoRA job's 4-bit base
    load_seconds: float
    generate_seconds: float


_stop = threading.Event()


def request_stop() -> None:
    """Stop any generation in this process at its next token (the consumer's shutdown)."""
    _stop.set()


def _stopping(deadline: float | None) -> Any:
    import torch
    from transformers import StoppingCriteria

    class StopWhenAsked(StoppingCriteria):
        reason: str | None = None

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            if _stop.is_set():
                self.reason = "the worker is shutting down"
            elif deadline is not None and time.monotonic() > deadline:
                self.reason = "the try ran out of time"
            done = self.reason is not None
            rows = input_ids.shape[0]
            return torch.full((rows,), done, dtype=torch.bool, device=input_ids.device)

    return StopWhenAsked()


def generate_side_by_side(
    plan: TrainingPlan,
    adapter_dir: Path,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    *,
    device: str = "cpu",
    card: int = 0,
    deadline: float | None = None,
) -> TryResult:
    """Each prompt's completion by the base (adapter disabled) and by the adapter.

    `plan`: the run's resolved plan (`worker.merge.job_adapter_plan`), its `model` already
    checked by the caller; `temperature` 0 is greedy, above samples; `deadline` a
    `time.monotonic()` past which generation stops. Raises `PromptTooLong` before anything
    is generated, `Stopped` when generation was stopped; library errors (no memory, a broken
    adapter) propagate.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, GenerationConfig, StoppingCriteriaList

    from worker.modeling import load_for_inference, load_tokenizer

    started = time.perf_counter()
    tokenizer = load_tokenizer(plan.model)
    encoded = [tokenizer(p, return_tensors="pt") for p in prompts]
    window = context_window(
        AutoConfig.from_pretrained(plan.model, trust_remote_code=False).to_dict()
    )
    for i, ids in enumerate(encoded):
        n = int(ids["input_ids"].shape[1])
        if window is not None and n + max_new_tokens > window:
            raise PromptTooLong(i, n, window, max_new_tokens)
    base = load_for_inference(plan, device, card)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    loaded = time.perf_counter()

    sampling = temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        # Plain sampling at the temperature asked: no top-k or nucleus cut of the model's own
        # generation_config, so that the same seed and settings mean the same on every model.
        temperature=temperature if sampling else None,
        top_k=0 if sampling else None,
        top_p=1.0 if sampling else None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    target = next(model.parameters()).device
    stop = _stopping(deadline)
    stops = StoppingCriteriaList([stop])
    completions = []
    try:
        for prompt, ids in zip(prompts, encoded, strict=True):
            ids = {k: v.to(target) for k, v in ids.items()}
            n = ids["input_ids"].shape[1]
            texts, lengths = {}, {}
            for side in ("base", "adapter"):
                torch.manual_seed(seed)  # the same draws for both sides (and every card)
                adapter_off = model.disable_adapter() if side == "base" else nullcontext()
                with adapter_off, torch.inference_mode():
                    out = model.generate(**ids, generation_config=config, stopping_criteria=stops)
                if stop.reason is not None:
                    raise Stopped(stop.reason)
                new = out[0, n:]
                texts[side] = tokenizer.decode(new, skip_special_tokens=True)
                lengths[side] = int(new.shape[0])
            completions.append(
                Completion(
                    prompt=prompt,
                    base=texts["base"],
                    adapter=texts["adapter"],
                    prompt_tokens=int(n),
                    base_tokens=lengths["base"],
                    adapter_tokens=lengths["adapter"],
                )
            )
    finally:
        # The consumer lives on between tries: give the memory back to the card now.
        del model, base
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return TryResult(
        completions=completions,
        device=device if device != "cuda" else f"cuda:{card}",
        base_weights="nf4" if plan.quantize_4bit else "original",
        load_seconds=round(loaded - started, 3),
        generate_seconds=round(time.perf_counter() - loaded, 3),
    )
