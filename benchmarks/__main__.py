"""Entry point: ``./dev bench [core|parked|archive|lag] [options]`` or ``python -m benchmarks``."""

from __future__ import annotations

import sys

from benchmarks import bench_archive, bench_core, bench_lag, bench_parked

SUITES = {
    "core": bench_core.main,
    "parked": bench_parked.main,
    "archive": bench_archive.main,
    "lag": bench_lag.main,
}


def main() -> None:
    args = sys.argv[1:]
    name = args[0] if args and not args[0].startswith("-") else "core"
    rest = args[1:] if args and not args[0].startswith("-") else args
    if name not in SUITES:
        raise SystemExit(f"unknown benchmark {name!r}; choose from {sorted(SUITES)}")
    SUITES[name](rest)


if __name__ == "__main__":
    main()
