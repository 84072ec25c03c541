"""Form fields drawn from the API's own request models, so a page's inputs, their limits,
defaults and help text are the ones the endpoint validates against and cannot drift."""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

Kind = Literal["int", "float", "bool", "choice", "modules"]

# What a person reads beside each input; the rest of the name's meaning is in its help text.
LABELS = {
    "seq_len": "Sequence length (tokens)",
    "micro_batch_size": "Micro batch size",
    "gradient_accumulation_steps": "Gradient accumulation steps",
    "gradient_checkpointing": "Gradient checkpointing",
    "lora_rank": "LoRA rank r",
    "lora_alpha": "LoRA alpha",
    "lora_dropout": "LoRA dropout",
    "loraplus_lr_ratio": "LoRA+ ratio (lr B / lr A)",
    "target_modules": "Target modules",
    "learning_rate": "Learning rate",
    "lr_scheduler": "Learning-rate schedule",
    "warmup_ratio": "Warmup ratio",
    "max_steps": "Max steps",
    "epochs": "Epochs",
    "checkpoint_steps": "Checkpoint every (steps)",
    "logging_steps": "Log every (steps)",
    "priority": "What matters most",
    "lora_quality_gap": "LoRA has shown a quality gap",
    "serve_with": "Where the adapter will be served",
}


@dataclass(frozen=True)
class FormField:
    name: str
    label: str
    kind: Kind
    help: str
    default: Any = None  # None: the field may be left empty (the server's default applies)
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive: tuple[bool, bool] = (False, False)  # (minimum, maximum) excluded

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "kind": self.kind,
            "help": self.help,
            "default": self.default,
            "choices": list(self.choices),
            "minimum": self.minimum,
            "maximum": self.maximum,
            "exclusive": list(self.exclusive),
        }


def _kind(annotation: Any) -> tuple[Kind, tuple[str, ...]]:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, types.UnionType):
        literals = [a for a in args if get_origin(a) is Literal]
        if len(args) == 1:
            return _kind(args[0])
        if literals and len(literals) < len(args):  # 'all-linear' or a list of names
            return "modules", ()
        raise TypeError(f"no form input for {annotation!r}")
    if get_origin(annotation) is Literal:
        return "choice", tuple(str(a) for a in get_args(annotation))
    if annotation is bool:
        return "bool", ()
    if annotation is int:
        return "int", ()
    if annotation is float:
        return "float", ()
    raise TypeError(f"no form input for {annotation!r}")


def form_fields(
    model: type[BaseModel], docs: type[BaseModel] | None = None, skip: tuple[str, ...] = ()
) -> list[FormField]:
    """One input per field of ``model``; help text from the field's description, or from the
    same field of ``docs`` (the worker's TrainingPlan documents the job's settings)."""
    out = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        kind, choices = _kind(info.annotation)
        minimum = maximum = None
        exclusive = [False, False]
        for rule in info.metadata:  # pydantic's annotated_types.Ge/Gt/Le/Lt
            for attr, bound in (("ge", 0), ("gt", 0), ("le", 1), ("lt", 1)):
                value = getattr(rule, attr, None)
                if value is None:
                    continue
                if bound == 0:
                    minimum = float(value)
                else:
                    maximum = float(value)
                exclusive[bound] = attr in ("gt", "lt")
        described = info.description
        if not described and docs is not None and name in docs.model_fields:
            described = docs.model_fields[name].description
        default = None if info.default is PydanticUndefined else info.default
        out.append(
            FormField(
                name=name,
                label=LABELS.get(name, name.replace("_", " ").capitalize()),
                kind=kind,
                # Plain text on the page: the docstrings' Markdown code marks would show raw.
                help=" ".join((described or "").replace("`", "").split()),
                default=default,
                choices=choices,
                minimum=minimum,
                maximum=maximum,
                exclusive=(exclusive[0], exclusive[1]),
            )
        )
    return out


def field_dicts(
    model: type[BaseModel], docs: type[BaseModel] | None = None
) -> list[dict[str, Any]]:
    """`form_fields` as the page's JSON data carries them."""
    return [f.as_dict() for f in form_fields(model, docs)]
