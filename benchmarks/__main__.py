"""Entry point: ``python -m benchmarks [options]`` (or ``./dev bench``) runs the whole suite
(benchmarks/suite.py); ``python -m benchmarks
core|parked|archive|lag|dbos|restate|restart|fencing|messages [options]`` runs one part alone."""

from __future__ import annotations

import sys

from benchmarks import (
    bench_archive,
    bench_core,
    bench_dbos,
    bench_fencing,
    bench_lag,
    bench_messages,
    bench_parked,
    bench_restart,
    bench_restate,
    suite,
)

PARTS = {
    "core": bench_core.main,
    "parked": bench_parked.main,
    "archive": bench_archive.main,
    "lag": bench_lag.main,
    "dbos": bench_dbos.main,
    "restate": bench_restate.main,
    "restart": bench_restart.main,
    "fencing": bench_fencing.main,
    "messages": bench_messages.main,
}


def main() -> None:
    args = sys.argv[1:]
    if args and not args[0].startswith("-"):
        if args[0] not in PARTS:
            raise SystemExit(f"unknown benchmark {args[0]!r}; choose from {sorted(PARTS)}")
        PARTS[args[0]](args[1:])
    else:
        suite.main(args)


if __name__ == "__main__":
    main()
