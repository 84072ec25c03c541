"""The benchmark's progress lines, each stamped with the seconds since it began."""

from __future__ import annotations

import time

_STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {message}", flush=True)
