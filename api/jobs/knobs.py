"""OpenAI's fine-tuning fields read as loracle's knobs, in one place.

A job's hyperparameters may come at the top level or under `method.supervised` (once each),
with OpenAI's three beside loracle's own:

- `n_epochs` is `epochs`;
- `batch_size` is the effective batch, micro_batch_size x gradient_accumulation_steps: with
  a micro batch given it must divide the batch; alone, the micro batch is the plan's default
  (1, the least memory) and the rest is accumulation;
- `learning_rate_multiplier` multiplies the advisor's suggested learning rate for the model
  and variant (`fill_defaults` applies it, once the variant is chosen);
- the top-level `seed` is `hyperparameters.seed`.

"auto" leaves each to the advisor and the plan's defaults, as leaving it out does.
"""

from __future__ import annotations

from typing import Any

from api.jobs.schemas import JobCreate
from loracle.errors import Problem
from loracle.plan import TrainingPlan

OPENAI_KNOBS = ("n_epochs", "batch_size", "learning_rate_multiplier")


def requested(body: JobCreate) -> tuple[dict[str, Any], list[Problem]]:
    """The hyperparameters as sent, from the top level and `method.supervised`."""
    top = body.hyperparameters.model_dump(exclude_none=True)
    supervised = body.method.supervised if body.method else None
    nested = supervised.hyperparameters.model_dump(exclude_none=True) if supervised else {}
    problems = [
        Problem(
            f"method.supervised.hyperparameters.{k}",
            "is given at the top level too (hyperparameters); give it in one place",
            nested[k],
        )
        for k in sorted(set(top) & set(nested))
    ]
    return {**top, **nested}, problems


def translate(
    body: JobCreate, hp: dict[str, Any]
) -> tuple[dict[str, Any], float | None, list[Problem]]:
    """loracle's knobs for `hp` (OpenAI's removed), the learning-rate multiplier to apply,
    and what contradicts itself."""
    out = {k: v for k, v in hp.items() if k not in OPENAI_KNOBS}
    problems: list[Problem] = []

    def clash(name: str, other: str, value: Any) -> None:
        problems.append(
            Problem(f"hyperparameters.{name}", f"says the same as {other}; give one of them", value)
        )

    epochs = hp.get("n_epochs")
    if isinstance(epochs, int):
        if "epochs" in out and out["epochs"] != epochs:
            clash("n_epochs", "hyperparameters.epochs", epochs)
        out["epochs"] = float(epochs)

    batch = hp.get("batch_size")
    if isinstance(batch, int):
        micro = out.get("micro_batch_size", TrainingPlan.model_fields["micro_batch_size"].default)
        if batch % micro:
            problems.append(
                Problem(
                    "hyperparameters.batch_size",
                    f"is the effective batch, micro_batch_size x gradient_accumulation_steps, "
                    f"and micro_batch_size {micro} does not divide it; choose a multiple of "
                    f"{micro}",
                    batch,
                )
            )
        else:
            steps = batch // micro
            if out.get("gradient_accumulation_steps", steps) != steps:
                clash("batch_size", "micro_batch_size x gradient_accumulation_steps", batch)
            out["micro_batch_size"], out["gradient_accumulation_steps"] = micro, steps

    multiplier = hp.get("learning_rate_multiplier")
    if not isinstance(multiplier, float | int) or isinstance(multiplier, bool):
        multiplier = None
    elif "learning_rate" in out:
        clash("learning_rate_multiplier", "hyperparameters.learning_rate", multiplier)

    if body.seed is not None:
        if out.get("seed", body.seed) != body.seed:
            problems.append(
                Problem("seed", "differs from hyperparameters.seed; give one of them", body.seed)
            )
        out["seed"] = body.seed
    return out, (float(multiplier) if multiplier is not None else None), problems


def reported(row_hp: dict[str, Any], lr_base: float | None) -> dict[str, Any]:
    """OpenAI's three, resolved, beside every loracle knob of a job."""
    micro = row_hp.get("micro_batch_size")
    steps = row_hp.get("gradient_accumulation_steps")
    lr = row_hp.get("learning_rate")
    epochs = row_hp.get("epochs")
    n_epochs: Any = "auto"
    if isinstance(epochs, int | float):
        n_epochs = int(epochs) if epochs == int(epochs) else epochs
    return {
        **row_hp,
        "n_epochs": n_epochs,
        "batch_size": micro * steps if micro and steps else "auto",
        "learning_rate_multiplier": round(lr / lr_base, 6) if lr and lr_base else "auto",
    }
