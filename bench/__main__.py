"""python -m bench [name] [args...]: run one benchmark, or all of them."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["advice", "training", "fleet", "trace_speed", "evidence"]


def main() -> None:
    names = sys.argv[1:2] or BENCHMARKS
    rest = sys.argv[2:]
    if names[0].startswith("-") and names[0] not in ("-h", "--help"):
        # Options belong to one benchmark: `python -m bench --quick` would otherwise be
        # read as a benchmark called "--quick".
        sys.exit(
            f"{names[0]} is an option of one benchmark: name the benchmark first, e.g. "
            f"`python -m bench evidence {' '.join(sys.argv[1:])}`; benchmarks: "
            f"{', '.join(BENCHMARKS)}"
        )
    if names[0] in ("-h", "--help"):
        print(__doc__)
        print(
            f"benchmarks: {', '.join(BENCHMARKS)}; `python -m bench NAME --help` for one's options"
        )
        return
    for name in names:
        if name not in BENCHMARKS:
            sys.exit(f"unknown benchmark {name!r}; choose from {BENCHMARKS}")
        print(f"== {name}")
        importlib.import_module(f"bench.{name}").main(rest)


if __name__ == "__main__":
    main()
