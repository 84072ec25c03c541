"""Exact memory: measure one real training step of the actual architecture on meta tensors.

    from memtrace import trace_memory
    result = trace_memory(config_json, TrainingSettings(...), Combination("qlora"))

Modules (torch is imported only by the first four, and only when used):

- `tracker`: `StorageTracker`, the dispatch mode that follows every storage and finds the peak.
- `emulation`: what a meta step needs to allocate what the target device allocates
  (autocast, attention and dropout kernels, bitsandbytes' dispatch, data-dependent branches).
- `build`: the worker's model, built from a config on the meta device.
- `trace`: the Trainer-like steps, `trace_memory` and `TraceResult`.
- `runner`: torch-free; runs a trace in a subprocess with a time limit and caches results
  (what the API and the CLI call).
- `grid`: the calibration grid of the analytic model (`python -m memtrace.grid`).

How it works, what it models after which library code, and how it agrees with real steps:
docs/memory.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TraceResult", "trace_memory"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from memtrace import trace

        return getattr(trace, name)
    raise AttributeError(name)
