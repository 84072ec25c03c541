"""loracle's own measured figures, for the advice to cite next to the papers'.

Where they come from: `python -m bench evidence` fine-tunes one small pretrained model with
every variant through the worker's training code and writes its headline figures to
`advisor/data/evidence.json` (tables, plots and method in BENCHMARKS.md). The file is package
data and committed: an installed advisor cites the figures of the last published run, without
the benchmark, torch or the repository at hand.

When the file is absent, unreadable or of another schema, `load()` returns None and every
function here returns nothing to cite: the advice is the same, minus the measured figures.
A figure missing from an otherwise good file drops only the sentence that needs it.

Pure: json and importlib.resources only, read once per process.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from advisor.answers import Note
from advisor.variants import BASE_VARIANT, IDEA_NAMES, VARIANTS, title_of

SCHEMA = 1
EVIDENCE_FILE = "data/evidence.json"


def published(key: str) -> str:
    """The design document's claim for a variant or a combination ('qlora+dora'), from the
    registry; KeyError for an unknown key."""
    names = key.split("+")
    if len(names) > 1 and all(n in VARIANTS for n in names):
        return "published: the variants combine (design document)"
    return VARIANTS[key].published


@cache
def load(path: str | None = None) -> dict[str, Any] | None:
    """The packaged evidence file's figures (or those of `path`), read once per process; None
    when there is no usable file."""
    return read(path)


def read(path: str | None = None) -> dict[str, Any] | None:
    """Read and check an evidence file (default: the packaged one), uncached."""
    try:
        if path is None:
            text = resources.files("advisor").joinpath(EVIDENCE_FILE).read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return None
    return data


def _pm(block: Any, fmt: str, unit: str = "") -> str:
    """`mean ± std` of a `{"mean", "std"}` block; raises on a missing figure."""
    spread = fmt.replace("+", "").format(block["std"])
    return f"{fmt.format(block['mean'])}{unit} ± {spread}{unit}"


def _source(data: dict[str, Any]) -> str:
    setup = data["setup"]
    return (
        f"loracle measured ({setup['model']}, {setup['device']}, {setup['seeds']} seeds, "
        f"{setup['steps']} steps, {str(data['date'])[:10]}; BENCHMARKS.md)"
    )


def _figures(data: dict[str, Any], key: str) -> str:
    """The measured figures of one variant or combination, as one clause (the evidence of the
    question that decided it)."""
    return "; ".join(_facts(data, key))


def _facts(data: dict[str, Any], key: str) -> list[str]:
    """The measured figures of one variant or combination, one phrase per fact (each note is
    one; the evidence joins them); raises on a missing figure."""
    f = data[key]
    if key == "loraplus":
        rates = f.get("best_learning_rates") or {}
        best = f"{_pm(f['speedup_best_lr'], '{:.2f}', 'x')} sooner with each at its best rate"
        if rates.get("lora") and rates.get("loraplus"):
            best += f" (LoRA {rates['lora']:g}, LoRA+ {rates['loraplus']:g})"
        same = f.get("speedup_same_lr")
        if same:
            same_text = f"{_pm(same, '{:.2f}', 'x')} sooner at the same learning rate"
        else:
            same_text = (
                f"at LoRA's learning rate it never did ({f.get('reached_same_lr', 'no')} seeds "
                "reached it): give LoRA+ a lower rate than LoRA's"
            )
        return [f"LoRA+ reached LoRA's final held-out loss {best}; {same_text}"]
    if key == "dora":
        return [
            f"DoRA's held-out loss {_pm(f['eval_loss_diff_pct'], '{:+.1f}', '%')} and exact "
            f"match {_pm(f['exact_match_diff_pts'], '{:+.1f}', ' pts')} against LoRA's, with "
            f"{f['extra_parameters_pct']:+.1f}% parameters and steps taking "
            f"{_pm(f['step_time_pct'], '{:+.0f}', '%')} more CPU time"
        ]
    if key == "qlora":
        est = f["estimate_7b_gb"]
        tool = (
            "the worker's memory tracer"
            if est.get("method") == "traced"
            else "the advisor's memory model"
        )
        # Step time is optional: files written before it was measured still cite the rest.
        step = f.get("step_time_pct")
        # On a GPU LoRA keeps these layers in 16 bits; files written before that ratio was
        # recorded name the fp32 of their CPU run instead.
        if f.get("adapted_linears_ratio_16bit"):
            layers = (
                f"QLoRA's NF4 layers hold {f['adapted_linears_ratio_16bit']:.2f}x the bytes of "
                "the same layers in 16 bits (as LoRA keeps them on a GPU)"
            )
        else:
            layers = (
                f"QLoRA's NF4 layers hold {f['adapted_linears_ratio_small']:.2f}x the bytes of "
                "the same layers in fp32 (LoRA's CPU run)"
            )
        peak = f.get("peak_ratio_small")
        facts = [layers]
        if peak:
            model = data.get("setup", {}).get("model_short", "the small model")
            saving = "no saving" if peak >= 0.97 else "a saving" if peak <= 0.9 else "little saving"
            facts.append(
                f"measured on {model}, its peak memory was {peak:.2f}x LoRA's ({saving} at "
                "that size, where the weights are a small part of the peak)"
            )
        facts.append(
            f"held-out loss {_pm(f['eval_loss_diff_pct'], '{:+.1f}', '%')} and exact match "
            f"{_pm(f['exact_match_diff_pts'], '{:+.1f}', ' pts')} against LoRA's"
        )
        if step:
            facts.append(f"steps took {_pm(step, '{:+.0f}', '%')} more CPU time than LoRA's")
        facts.append(
            f"for a 7B model {tool} gives {est['qlora']:.1f} GB against {est['lora']:.1f} GB "
            "(an estimate, not a measurement)"
        )
        return facts
    if key == "lora":
        text = (
            f"LoRA's held-out loss was {f['loss_gap_pct']:+.1f}% against the best variant's "
            f"({title_of(f['best_variant'])}) at the same settings"
        )
        tuned = f.get("tuned_best")
        if tuned and f.get("tuned_loss_gap_pct") is not None:
            text += (
                f" and {f['tuned_loss_gap_pct']:+.1f}% against "
                f"{title_of(tuned['variant'])} at "
                f"{tuned['learning_rate']:g} with LoRA at its best rate "
                f"({tuned['lora_learning_rate']:g})"
            )
        return [text]
    if key == "qlora+loraplus":
        best = f.get("speedup_vs_qlora_best_lr")
        same = f.get("speedup_vs_qlora")
        if same:
            same_text = f"{_pm(same, '{:.2f}', 'x')} sooner at the same learning rate"
        else:
            same_text = (
                f"at QLoRA's learning rate it never did ({f.get('reached_vs_qlora', 'no')} seeds "
                "reached it)"
            )
        if best:
            return [
                "QLoRA + LoRA+ reached QLoRA's final held-out loss "
                f"{_pm(best, '{:.2f}', 'x')} sooner with LoRA+'s and LoRA's best rates; "
                f"{same_text}"
            ]
        return [f"QLoRA + LoRA+ reached QLoRA's final held-out loss {same_text}"]
    if key == "qlora+dora":
        return [
            f"QLoRA + DoRA's held-out loss {_pm(f['eval_loss_diff_pct_vs_qlora'], '{:+.1f}', '%')}"
            f" and exact match {_pm(f['exact_match_diff_pts_vs_qlora'], '{:+.1f}', ' pts')} "
            "against QLoRA's"
        ]
    raise KeyError(key)


# A verdict as a sentence says it ("partly" alone is the evidence's shorthand).
VERDICT_WORDS = {"partly": "partly reproduces"}

CHECKS = {
    "quality": "quality",
    "parameters": "parameters under 5%",
    "memory_7b": "7B memory, modeled",
    "memory_small": "memory measured at this scale",
}


def _verdict(data: dict[str, Any], key: str) -> str:
    """'; <verdict> at this scale', with the verdict of each part of a claim of several."""
    verdict = data[key].get("verdict")
    if not verdict:
        return ""
    return f"; {verdict} at this scale{_verdict_parts(data, key)}"


def _verdict_parts(data: dict[str, Any], key: str) -> str:
    """' (<part>: <verdict>; ...)' for a claim of several parts, else ''."""
    checks = data[key].get("checks") or {}
    parts = "; ".join(f"{CHECKS.get(k, k)}: {v}" for k, v in checks.items())
    return f" ({parts})" if parts else ""


def measured_evidence(variant: str | None, data: dict[str, Any] | None = None) -> str:
    """A clause to append to the evidence of the question that decided `variant`:
    '; loracle measured: ...' or '' when there is nothing to cite."""
    data = load() if data is None else data
    if variant is None or data is None:
        return ""
    try:
        return (
            f"; loracle measured: {_figures(data, variant)}{_verdict(data, variant)} "
            f"({published(variant)}; BENCHMARKS.md)"
        )
    except (KeyError, TypeError, ValueError):
        return ""


def measured_notes(
    variant: str, combine_with: tuple[str, ...] | list[str] = (), data: dict[str, Any] | None = None
) -> list[Note]:
    """Notes with loracle's own figures for QLoRA, DoRA and LoRA+ (beside the published notes)
    and, when the answer combines ideas, for that combination: one per measured fact, then one
    with the published claim and whether the measurements reproduce it. A key with a figure
    missing gives no notes; the others are unaffected."""
    data = load() if data is None else data
    if data is None:
        return []
    keys = list(IDEA_NAMES)  # an idea without published figures is skipped below
    keys += [f"{variant}+{idea}" for idea in combine_with]
    if variant == BASE_VARIANT and not combine_with:
        keys.append(BASE_VARIANT)
    notes: list[Note] = []
    for key in keys:
        try:
            title, source = title_of(key), _source(data)
            facts = [Note(text=_sentence(title, fact), source=source) for fact in _facts(data, key)]
            claim, _, cited = published(key).removeprefix("published: ").rpartition(" (")
            verdict = data[key].get("verdict")
        except (KeyError, TypeError, ValueError):
            continue
        notes += facts
        if verdict:
            notes.append(
                Note(
                    text=_sentence(
                        title,
                        f"at loracle's scale the published claim ({claim}) "
                        f"{VERDICT_WORDS.get(verdict, verdict)}{_verdict_parts(data, key)}",
                    ),
                    source=f"{cited.removesuffix(')')}; verdict: BENCHMARKS.md",
                )
            )
    return notes


def _sentence(subject: str, fact: str) -> str:
    """`fact` as a sentence about `subject`: named first, capitalised, with a full stop."""
    text = fact if fact.startswith(subject) else f"{subject}: {fact}"
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
