"""Merge a job's adapter into its base and export the result: `merge_adapter(...)`.

What lands in `out_dir` (written atomically, like the adapter: `worker.artifacts.publish_dir`):

    config.json, generation_config.json   the base's config, dtype set, no quantization_config
    model*.safetensors                    the merged weights (sharded past 5 GB, with an index)
    tokenizer files                       the base's tokenizer, with the pad token the run used
    loracle-merge.json                    the record: job, variant, base, dtype, base weights,
                                          library versions

A plain transformers model: `AutoModelForCausalLM.from_pretrained(out_dir)` loads it, vLLM
serves it (`vllm serve out_dir`), and a later loracle job can train on top of it once it is in
a model root.

QLoRA (a 4-bit NF4 base) is merged into 16 bits, never re-quantized. The adapter was trained
against the NF4 base as bitsandbytes dequantizes it at every matmul, not against the original
16-bit weights, so the base is loaded in 4 bits exactly as the run loaded it (same
`BitsAndBytesConfig`: NF4, double quantization), dequantized to `dtype`
(`PreTrainedModel.dequantize`), and only then is the adapter attached and merged:
W_merged = dequant(NF4(W)) + delta. Its logits are then those of the adapter on that
dequantized base, within float rounding. The other two ways lose accuracy:

- merging into the 4-bit layers (peft's bnb merge) re-quantizes W + delta to NF4, and the
  rounding wipes out much of a small delta: peft warns "Merge lora module to 4-bit linear may
  get different generations due to rounding errors" and its maintainers say there is no way
  around it (https://github.com/huggingface/peft/issues/2321);
- merging into the original 16-bit weights adds the delta to weights the adapter never saw,
  W + delta instead of dequant(NF4(W)) + delta: the base's quantization error stays between the
  adapter and what it was trained for. peft's docs did not say which to use
  (https://github.com/huggingface/peft/issues/2105, https://github.com/huggingface/peft/issues/1080);
  the recommendation in #2105 (Unsloth's way) is the one taken here: quantize, dequantize, then
  merge. docs/merge.md has the measured differences of each.

The cost: the merged model is as big as a 16-bit base (2 bytes a parameter in bf16/fp16, 4 in
fp32), and the merge holds that much in memory, plus the 4-bit copy while it dequantizes.

DoRA merges too (peft folds the magnitude vector into the weight: W' = m * (W + BA) / ||W + BA||
per column); LoRA+ and rsLoRA change only how the adapter was trained or scaled, which the saved
adapter_config.json already carries.

The merge runs on the CPU by default: it is a few passes over the weights, with no gradients,
and host memory is usually larger than a card's (a 70B QLoRA job trains in 4 bits on one card
and would not fit there in 16). `device="cuda"` is faster where the 16-bit model fits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from loracle.model_source import is_local, refuse_remote_code
from loracle.plan import TrainingPlan, load_plan
from loracle.recipe import make_bnb_config, torch_dtype
from worker import artifacts

RECORD_FILE = "loracle-merge.json"
Dtype = Literal["bf16", "fp16", "fp32"]


class MergeResult(BaseModel):
    """What a merge wrote. `base_weights`: `original` (the base as stored) or
    `nf4-dequantized` (a QLoRA base, quantized as the run did and dequantized to `dtype`)."""

    out_dir: str
    bytes: int
    files: list[str]
    dtype: str
    base_model: str
    base_weights: Literal["original", "nf4-dequantized"]
    variant: str
    combine_with: list[str]
    seconds: float


def adapter_plan(adapter_dir: Path) -> TrainingPlan | None:
    """The resolved plan a loracle run recorded next to its adapter (`plan.json`), or None
    for an adapter from elsewhere."""
    path = adapter_dir / artifacts.PLAN_FILE
    return load_plan(path) if path.is_file() else None


def job_adapter_plan(adapter_dir: Path) -> TrainingPlan:
    """`adapter_plan` for the adapter of one of this service's jobs, which always has one:
    FileNotFoundError when there is none (no adapter there)."""
    plan = adapter_plan(adapter_dir)
    if plan is None:
        raise FileNotFoundError(f"{adapter_dir} holds no adapter with its plan.json")
    return plan


def merge_dtype(requested: str | None, plan: TrainingPlan | None) -> str:
    """The merge's dtype: the one asked for, else the run's precision (as its plan recorded
    it, resolved: bf16 or fp16 on a card, fp32 on the CPU), else fp32."""
    if requested is not None:
        return requested
    if plan is not None and plan.precision != "auto":
        return plan.precision
    return "fp32"


def dir_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def merge_adapter(
    base_model_path: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    dtype: str | None = None,
    *,
    job_id: str | None = None,
    device: str = "cpu",
) -> MergeResult:
    """Merge the adapter in `adapter_dir` into the base at `base_model_path` and write the
    result to `out_dir` (replacing what was there, atomically). Returns what was written.

    `dtype` (`bf16`, `fp16`, `fp32`): the merged weights' dtype; None takes the run's
    precision from the adapter's `plan.json`. Whether the base was 4-bit also comes from
    there (a QLoRA run): see the module docstring for how that base is merged. `job_id` only
    goes into the record.

    Raises `ModelSourceError` for a base that asks for remote code, `PlanError` for an
    unreadable plan.json; library errors (no memory, a broken adapter) propagate.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    base = str(base_model_path)
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if is_local(base):
        refuse_remote_code(base)
    plan = adapter_plan(adapter_dir)
    precision = merge_dtype(dtype, plan)
    target = torch_dtype(precision)
    quantized = plan is not None and plan.quantize_4bit

    load: dict[str, Any] = {"dtype": target, "use_safetensors": True, "trust_remote_code": False}
    if quantized:
        assert plan is not None
        # Loaded as the run loaded it (its precision, its NF4 + double quantization config):
        # the weights are cast to that dtype before they are quantized, so these are the
        # codes it trained on whatever `dtype` the export asks for.
        run_dtype = torch_dtype(plan.precision) if plan.precision != "auto" else target
        load["dtype"] = run_dtype
        load["quantization_config"] = make_bnb_config(plan, run_dtype)
    if device != "cpu":
        load["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(base, **load)
    if quantized:
        model = model.dequantize(dtype=load["dtype"]).to(target)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    # safe_merge: check the merged weights for NaN/inf before they replace the base's.
    with torch.no_grad():
        merged = model.merge_and_unload(safe_merge=True)
    merged = merged.to(target)
    # Not a quantized model any more: no quantization_config in config.json, or vLLM and
    # from_pretrained would try to load the weights as 4-bit.
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(merged.config, attribute):
            delattr(merged.config, attribute)
    merged.config.dtype = target
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # what the run trained with

    record = {
        "job_id": job_id,
        "variant": plan.variant if plan else None,
        "combine_with": list(plan.combine_with) if plan else [],
        "base_model": base,
        "adapter_dir": str(adapter_dir),
        "dtype": precision,
        "base_weights": "nf4-dequantized" if quantized else "original",
        "versions": artifacts.library_versions(),
    }

    def fill(directory: Path) -> None:
        merged.save_pretrained(str(directory), safe_serialization=True)
        tokenizer.save_pretrained(str(directory))
        artifacts.write_json(directory / RECORD_FILE, record)

    artifacts.publish_dir(out_dir.parent, out_dir.name, fill)
    return MergeResult(
        out_dir=str(out_dir),
        bytes=dir_size(out_dir),
        files=sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()),
        dtype=precision,
        base_model=base,
        base_weights=record["base_weights"],  # type: ignore[arg-type]
        variant=record["variant"] or "lora",
        combine_with=record["combine_with"],
        seconds=time.perf_counter() - started,
    )


def read_record(out_dir: str | Path) -> dict[str, Any]:
    """The `loracle-merge.json` record of a merged model."""
    return json.loads((Path(out_dir) / RECORD_FILE).read_text(encoding="utf-8"))  # type: ignore[no-any-return]
