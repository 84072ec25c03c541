"""Short human messages for the events a training run reports without one.

The training code reports `started`, `resumed`, `checkpoint`, `finished`, `cancelled`,
`stopped` and `oom_retry` (worker/oom.py) as data only (`TrainingHooks.on_event`); the job's
event list, `loracle jobs watch` and the console show the message. `describe` writes it from
the data, with its numbers (step, loss, path, peak memory), so no event is stored with an
empty message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _started(d: dict[str, Any]) -> str:
    variant = "+".join([str(d.get("variant", "?")), *map(str, d.get("combine_with") or [])])
    line = (
        f"training started on {d.get('device', '?')} ({d.get('precision', '?')}, "
        f"{d.get('optimizer', '?')}): {variant}"
    )
    if d.get("trainable_parameters") is not None and d.get("all_parameters"):
        share = 100 * d["trainable_parameters"] / d["all_parameters"]
        line += (
            f", {_number(d['trainable_parameters'])} of {_number(d['all_parameters'])} "
            f"parameters trained ({share:.2f}%)"
        )
    if d.get("train_rows") is not None:
        line += f", {_number(d['train_rows'])} training rows"
    return line


def _finished(d: dict[str, Any]) -> str:
    line = f"training finished at step {d.get('step', '?')}"
    if d.get("final_loss") is not None:
        line += f", loss {_number(d['final_loss'])}"
    if d.get("eval_loss") is not None:
        line += f", validation loss {_number(d['eval_loss'])}"
    if d.get("adapter_dir"):
        line += f"; adapter in {d['adapter_dir']}"
    return line


def _checkpoint(d: dict[str, Any]) -> str:
    return f"checkpoint of step {d.get('step', '?')} written to {d.get('path', '?')}"


def _resumed(d: dict[str, Any]) -> str:
    return f"resumed at step {d.get('step', '?')} from {d.get('checkpoint', '?')}"


def _cancelled(d: dict[str, Any]) -> str:
    from worker.cancelled import outcome

    return f"training stopped for the cancel at step {d.get('step', '?')}; {outcome(d)}"


def _stopped(d: dict[str, Any]) -> str:
    return (
        f"training stopped at step {d.get('step', '?')} for the worker's shutdown, "
        "after a checkpoint of that step"
    )


def peak_text(d: dict[str, Any]) -> str:
    """The measured peak of an out-of-memory event's data, in words: CUDA's allocated and
    reserved peaks, or the CPU process's resident set growth (`worker.oom.peak_figures`)."""
    where = (d.get("peak") or {}).get("device") or "?"
    if d.get("peak_allocated_gib") is not None:
        text = f"peak {d['peak_allocated_gib']:.2f} GiB allocated"
        if d.get("peak_reserved_gib") is not None:
            text += f", {d['peak_reserved_gib']:.2f} GiB reserved"
        return f"{text} on {where}"
    if d.get("rss_growth_gib") is not None:
        return f"the process grew by {d['rss_growth_gib']:.2f} GiB on {where} (resident set)"
    return "peak not measured"


def _oom_retry(d: dict[str, Any]) -> str:
    step = d.get("step")
    where = f"in step {step + 1}" if isinstance(step, int) else "before training"
    start = d.get("resumed_from_step")
    resumes = f"resuming from step {start}" if start is not None else "from the start"
    return (
        f"out of memory {where} ({peak_text(d)}); retry {d.get('retry', '?')} of "
        f"{d.get('retries', '?')} with {d.get('remedy', '?')}, {resumes}"
    )


_WRITERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "started": _started,
    "finished": _finished,
    "checkpoint": _checkpoint,
    "resumed": _resumed,
    "cancelled": _cancelled,
    "stopped": _stopped,
    "oom_retry": _oom_retry,
}


def describe(type: str, data: dict[str, Any]) -> str:
    """The event's own `message` when it has one, else a line written from its data: the
    known events' sentences, or `type: key value, ...` of its plain values for any other."""
    given = data.get("message")
    if isinstance(given, str) and given:
        return given
    writer = _WRITERS.get(type)
    if writer is not None:
        return writer(data)
    plain = [
        f"{key} {_number(value)}"
        for key, value in data.items()
        if isinstance(value, str | int | float) and not isinstance(value, bool) and value != ""
    ]
    return f"{type}: {', '.join(plain)}" if plain else type
