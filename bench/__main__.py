"""python -m bench [name] [args...]: run one benchmark, or all of them."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["advice", "training", "trace_speed", "evidence"]


def main() -> None:
    names = sys.argv[1:2] or BENCHMARKS
    rest = sys.argv[2:]
    for name in names:
        if name not in BENCHMARKS:
            sys.exit(f"unknown benchmark {name!r}; choose from {BENCHMARKS}")
        print(f"== {name}")
        importlib.import_module(f"bench.{name}").main(rest)


if __name__ == "__main__":
    main()
