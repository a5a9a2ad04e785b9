"""Run benchmarks: all `bench_*.py` modules' `main()`, or those named on the command line."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    available = sorted(
        p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py")
    )
    chosen = argv or available
    unknown = set(chosen) - set(available)
    if unknown:
        sys.exit(f"unknown benchmark(s) {sorted(unknown)}; available: {', '.join(available)}")
    for name in chosen:
        print(f"\n=== bench {name} ===", flush=True)
        importlib.import_module(f"bench.bench_{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])
