"""How a model is built for training: the one place that decides it.

Everything here is a function of the plan (and the device it runs on), so the memory tracer
can rebuild the same model on the meta device. Nothing here trains.

Decisions, in the order a run meets them:

- Model source (`resolve_model_source`): a hub id passes through; a local directory must lie,
  symlinks followed, inside an allowed root, hold safetensors weights, and not ask for remote
  code (`auto_map` in config.json). Weights load with `use_safetensors=True` and
  `trust_remote_code=False`, always.
- Precision (`resolve_precision`): `auto` is bf16 on a CUDA card that supports it, fp16 on one
  that does not, fp32 on CPU. Explicit values are honoured.
- Optimizer (`resolve_optimizer`): unset means paged 8-bit AdamW for QLoRA on CUDA (the QLoRA
  recipe) and AdamW elsewhere. Off CUDA, paged optimizers have nothing to page, so
  `paged_adamw_8bit` runs as `adamw_8bit`; a bitsandbytes 8-bit optimizer that fails a one-step
  probe on this device falls back to `adamw`. Every fallback is returned as a warning and
  lands in the run record.
- Quantization (`make_bnb_config`): QLoRA's NF4 + double quantization, compute in the run's
  precision.
- Adapters (`make_lora_config`): peft `LoraConfig`, DoRA through `use_dora`. Adapter weights
  stay fp32 (peft's `autocast_adapter_dtype=True`) whatever the base dtype.
- LoRA+ (`build_optimizer`): `peft.optimizers.create_loraplus_optimizer`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from worker.errors import ModelSourceError
from worker.plan import TrainingPlan

if TYPE_CHECKING:
    import torch

Device = Literal["cuda", "cpu"]

# org/name, as the Hub spells repository ids: no leading dot, no "..", exactly one slash.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

# The Trainer's `optim` names for the plan's optimizer names.
TRAINER_OPTIM = {
    "adamw": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "sgd": "sgd",
}

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


# ---------------------------------------------------------------------------------------------
# Where the model comes from
# ---------------------------------------------------------------------------------------------


def _is_local(model: str) -> bool:
    """A path, not a hub id: absolute, `.`/`~`-relative, more than one slash, or an existing
    path (from_pretrained would load an existing relative directory before asking the Hub)."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or os.path.exists(model)


def resolve_model_source(model: str, allowed_roots: list[Path]) -> str:
    """Check a model reference and return what `from_pretrained` should load.

    A hub id (`org/name`) is returned unchanged. Anything else is a local directory (absolute,
    starting with `.` or `~`, with several slashes, or an existing path relative to the working
    directory, which `from_pretrained` would load before asking the Hub); it is resolved
    (symlinks followed) and must lie inside one of
    `allowed_roots`, as must every file directly inside it (a weights file symlinked out of
    the root is refused too). It must hold a config.json without `auto_map` (which asks for
    code shipped with the model) and `.safetensors` weights. Returns the resolved directory.

    Raises `ModelSourceError` naming the problem and the fix.
    """
    if not _is_local(model):
        if _HUB_ID.match(model) and ".." not in model:
            return model
        raise ModelSourceError(
            f"model {model!r} is neither a hub id ('org/name') nor a local path; give a hub id "
            "or an absolute directory path"
        )
    roots = [Path(root).expanduser().resolve() for root in allowed_roots]
    if not roots:
        raise ModelSourceError(
            f"model {model!r} is a local path but no local model roots are allowed; configure "
            "the allowed model roots or use a hub id"
        )
    try:
        directory = Path(model).expanduser().resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        raise ModelSourceError(f"model path {model!r} does not exist; check the path") from None

    def inside(path: Path) -> bool:
        return any(path.is_relative_to(root) for root in roots)

    where = ", ".join(str(root) for root in roots)
    if not inside(directory):
        raise ModelSourceError(
            f"model path {model!r} resolves to {str(directory)!r}, outside the allowed model "
            f"roots ({where}); move or copy the model into one of them"
        )
    if not directory.is_dir():
        raise ModelSourceError(f"model path {model!r} is not a directory; give the model folder")
    for entry in directory.iterdir():
        if not inside(entry.resolve()):
            raise ModelSourceError(
                f"model file {entry.name!r} in {str(directory)!r} links to "
                f"{str(entry.resolve())!r}, outside the allowed model roots ({where}); "
                "replace the link with the file itself"
            )
    refuse_remote_code(directory)
    if not any(directory.glob("*.safetensors")):
        raise ModelSourceError(
            f"model path {str(directory)!r} holds no .safetensors weights; only safetensors "
            "are loaded (pickle-based .bin files can run code): convert the weights"
        )
    return str(directory)


def refuse_remote_code(directory: Path | str) -> None:
    """Raise `ModelSourceError` when a local model's config.json is missing or asks for remote
    code (`auto_map`): loracle never runs code shipped with a model."""
    config_path = Path(directory) / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelSourceError(
            f"model path {str(directory)!r} has no config.json; give a transformers model folder"
        ) from None
    except json.JSONDecodeError as exc:
        raise ModelSourceError(f"{str(config_path)!r} is not valid JSON ({exc})") from None
    if "auto_map" in config:
        raise ModelSourceError(
            f"model {str(directory)!r} asks for remote code (config.json has auto_map "
            f"{sorted(config['auto_map'])}); loracle never runs code shipped with a model: use "
            "a model whose architecture transformers implements"
        )


# ---------------------------------------------------------------------------------------------
# Device, precision, optimizer
# ---------------------------------------------------------------------------------------------


def detect_device() -> Device:
    """`cuda` when a CUDA GPU is visible, else `cpu`."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device: str, bf16_supported: bool | None = None) -> str:
    """`auto` → bf16 on a CUDA card with bf16, fp16 on one without, fp32 on CPU; explicit values
    pass through. `bf16_supported` defaults to asking torch."""
    if precision != "auto":
        return precision
    if device != "cuda":
        return "fp32"
    if bf16_supported is None:
        import torch

        bf16_supported = torch.cuda.is_bf16_supported()
    return "bf16" if bf16_supported else "fp16"


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision (`bf16`, `fp16`, `fp32`)."""
    import torch

    return getattr(torch, DTYPES[precision])


def default_optimizer(plan: TrainingPlan, device: str) -> str:
    """The optimizer a plan gets when it names none: paged 8-bit AdamW for QLoRA on CUDA (the
    QLoRA paper's recipe, which pages optimizer state out under memory spikes), else AdamW."""
    if plan.optimizer is not None:
        return plan.optimizer
    return "paged_adamw_8bit" if plan.quantize_4bit and device == "cuda" else "adamw"


def bnb_8bit_optimizer_works(device: str) -> bool:
    """Probe: can bitsandbytes' 8-bit AdamW take one step on `device`? (4096 elements: the
    smallest tensor bitsandbytes keeps in 8 bits.)"""
    try:
        import bitsandbytes as bnb
        import torch

        param = torch.nn.Parameter(torch.zeros(4096, device=device))
        param.grad = torch.ones_like(param)
        bnb.optim.AdamW8bit([param], lr=1e-3).step()
    except Exception:
        return False
    return True


def resolve_optimizer(plan: TrainingPlan, device: str) -> tuple[str, list[str]]:
    """The optimizer this run will use on `device`, and the warnings of any fallback."""
    name = default_optimizer(plan, device)
    warnings: list[str] = []
    if name == "paged_adamw_8bit" and device != "cuda":
        warnings.append(
            f"optimizer: paged_adamw_8bit pages state between GPU and CPU memory; on {device} "
            "there is nothing to page, so adamw_8bit runs instead"
        )
        name = "adamw_8bit"
    if name == "adamw_8bit" and not bnb_8bit_optimizer_works(device):
        warnings.append(
            f"optimizer: bitsandbytes' 8-bit AdamW does not run on {device} here; adamw (torch, "
            "32-bit state, 4x the optimizer memory) runs instead"
        )
        name = "adamw"
    return name, warnings


def resolve_plan(plan: TrainingPlan, device: str) -> tuple[TrainingPlan, list[str]]:
    """Settle what the plan left open for `device`: precision, optimizer, absolute paths.

    Returns the resolved copy (what plan.json records) and the warnings of any fallback.
    """
    optimizer, warnings = resolve_optimizer(plan, device)
    model = plan.model
    if _is_local(model):
        model = str(Path(model).expanduser().resolve())
    resolved = plan.model_copy(
        update={
            "model": model,
            "precision": resolve_precision(plan.precision, device),
            "optimizer": optimizer,
            "train_file": plan.train_file.expanduser().resolve(),
            "validation_file": plan.validation_file.expanduser().resolve()
            if plan.validation_file
            else None,
            "output_dir": plan.output_dir.expanduser().resolve(),
        }
    )
    return resolved, warnings


# ---------------------------------------------------------------------------------------------
# Model construction
# ---------------------------------------------------------------------------------------------


def make_lora_config(plan: TrainingPlan):
    """peft `LoraConfig` for the plan (DoRA when the plan uses it)."""
    from peft import LoraConfig

    return LoraConfig(
        r=plan.lora_rank,
        lora_alpha=plan.lora_alpha,
        lora_dropout=plan.lora_dropout,
        target_modules=plan.target_modules,
        use_dora=plan.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def make_bnb_config(plan: TrainingPlan, compute_dtype: torch.dtype):
    """QLoRA's `BitsAndBytesConfig` (4-bit NF4, double quantization, matmuls in
    `compute_dtype`), or None when the plan does not quantize."""
    if not plan.quantize_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def attention_implementation(model_type: str | None) -> str:
    """sdpa (flash / memory-efficient kernels on CUDA) wherever transformers has it; eager
    for the architectures it refuses sdpa for. Gemma-2 is one: sdpa cannot soft-cap the
    attention logits (`Gemma2PreTrainedModel._supports_sdpa = False`), and eager attention
    keeps the s x s scores, which the memory model counts."""
    if model_type is None:
        return "sdpa"
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if cls is not None and getattr(cls, "_supports_sdpa", True) is False:
        return "eager"
    return "sdpa"


def model_load_kwargs(
    plan: TrainingPlan, device: str, model_type: str | None = None
) -> dict[str, Any]:
    """Keyword arguments of `AutoModelForCausalLM.from_pretrained` for a resolved plan
    (`model_type` from the model's config.json picks the attention implementation)."""
    dtype = torch_dtype(plan.precision)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": attention_implementation(model_type),
        "use_safetensors": True,
        "trust_remote_code": False,
        "quantization_config": make_bnb_config(plan, dtype),
    }
    if device == "cuda":
        # Straight onto the GPU; bitsandbytes quantizes while loading.
        kwargs["device_map"] = {"": 0}
    return kwargs


def load_model_and_tokenizer(plan: TrainingPlan, device: str):
    """Base model with adapters attached, ready for the Trainer, and its tokenizer.

    `plan` must be resolved (`resolve_plan`). For QLoRA the quantized model first goes
    through `peft.prepare_model_for_kbit_training` (freezes the base, enables input
    gradients, wires gradient checkpointing), then `restore_compute_dtype` returns the
    parameters it upcast to fp32 to the compute dtype. The tokenizer's pad token is its eos
    when it has none. Returns `(peft_model, tokenizer)`.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if _is_local(plan.model):
        refuse_remote_code(plan.model)
    tokenizer = AutoTokenizer.from_pretrained(plan.model, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.from_pretrained(plan.model, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        plan.model, **model_load_kwargs(plan, device, config.model_type)
    )
    if plan.quantize_4bit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=plan.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        restore_compute_dtype(model, torch_dtype(plan.precision))
    model = get_peft_model(model, make_lora_config(plan))
    return model, tokenizer


def restore_compute_dtype(model: Any, dtype: torch.dtype) -> int:
    """Return the frozen non-4-bit parameters that `prepare_model_for_kbit_training` upcast
    to fp32 (embeddings, head, norms, biases) to the compute dtype; returns how many.

    Why: in fp32 they cost memory for nothing (a 128k-vocabulary embedding and head are
    2 GiB more on Llama-3-8B), and fp32 norm weights promote their outputs, then the MLP
    and the residual stream, to fp32, because bitsandbytes' Linear4bit answers in its
    input's dtype: QLoRA's activations would outgrow LoRA's. LlamaRMSNorm already computes
    its statistics in fp32 whatever its weight's dtype, which is the stability the upcast
    was for. The analytic memory model (advisor/memory.py) assumes this layout.
    """
    import torch

    if dtype == torch.float32:
        return 0
    changed = 0
    for param in model.parameters():
        if param.dtype == torch.float32 and param.__class__.__name__ != "Params4bit":
            param.data = param.data.to(dtype)
            changed += 1
    return changed


def optimizer_class(name: str) -> type:
    """The optimizer class behind a plan optimizer name (for LoRA+, which builds its own)."""
    if name in ("adamw_8bit", "paged_adamw_8bit"):
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit if name == "adamw_8bit" else bnb.optim.PagedAdamW8bit
    import torch

    return {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]


def build_optimizer(model, plan: TrainingPlan):
    """The LoRA+ optimizer for a LoRA+ plan, else None (the Trainer then builds
    `TRAINER_OPTIM[plan.optimizer]` itself). `plan.optimizer` must be resolved."""
    if plan.optimizer is None:
        raise ValueError("plan.optimizer is unset; resolve the plan first (resolve_plan)")
    if not plan.use_loraplus:
        return None
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model,
        optimizer_cls=optimizer_class(plan.optimizer),
        lr=plan.learning_rate,
        loraplus_lr_ratio=plan.loraplus_lr_ratio,
    )
