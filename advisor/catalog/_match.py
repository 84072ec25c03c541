"""Forgiving name matching shared by the catalogs."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


def normalize(name: str) -> str:
    """Lowercase and drop everything but letters and digits: 'RTX 4090' == 'rtx-4090'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The catalog names nearest to ``name``, best first (at least one when any exist)."""
    pool = list(candidates)
    by_norm: dict[str, str] = {}
    for c in pool:
        by_norm.setdefault(normalize(c), c)
    key = normalize(name)
    hits = difflib.get_close_matches(key, list(by_norm), n=n, cutoff=0.4)
    # Substring hits ('a100' -> 'a100-40gb', 'a100-80gb') rank above fuzzy ones.
    contains = [c for k, c in by_norm.items() if key and (key in k or k in key)]
    ordered = [*contains, *(by_norm[h] for h in hits)]
    seen: list[str] = []
    for c in ordered:
        if c not in seen:
            seen.append(c)
    if not seen and pool:
        seen = [by_norm[h] for h in difflib.get_close_matches(key, list(by_norm), n=n, cutoff=0)]
    return seen[:n]
