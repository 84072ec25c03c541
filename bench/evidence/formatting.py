"""Figures as BENCHMARKS.md and the discussion write them."""

from __future__ import annotations

from typing import Any

MIB = 1 << 20


def pm(block: dict[str, Any] | None, fmt: str = "{:.2f}", unit: str = "") -> str:
    """A spread over seeds: "mean ± std (min..max)", or "n/a" when there is no figure."""
    if not block or block.get("mean") is None:
        return "n/a"
    text = f"{fmt.format(block['mean'])}{unit} ± {fmt.replace('+', '').format(block['std'])}{unit}"
    if block.get("n", 0) > 1:
        text += f" ({fmt.format(block['min'])}..{fmt.format(block['max'])})"
    return text


def num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def speed(block: dict[str, Any]) -> str:
    """A speed-up over seeds, and how many seeds never reached the target."""
    s = block.get("speedup") or {}
    n = len(block.get("per_seed", []))
    reached = block.get("reached", n)
    if n and reached == 0:
        return f"never reached (0 of {n} seeds)"
    text = pm(s, "{:.2f}", "x")
    if reached < n:
        text += f"; {n - reached} of {n} seeds never reached it"
    return text
