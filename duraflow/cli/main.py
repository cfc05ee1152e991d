"""Entry point of the ``duraflow`` command: builds the parser from the verbs' modules, runs the
chosen verb and maps its outcome to an exit code.

Exit codes: 0 done; 1 the workflow failed, was cancelled or terminated, an update's handler
raised, or ``result`` / ``update`` timed out; 2 an error (bad input, no such workflow, nothing
served, Ray unreachable, an update refused, a bad SQL query or one that does more than read),
printed without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from duraflow.cli import control, deploy, runs, sql, workers
from duraflow.cli.args import common_options
from duraflow.cli.output import EXIT_ERROR, EXIT_FAILED
from duraflow.errors import (
    DuraflowError,
    ResultTimeout,
    UpdateFailed,
    UpdateTimeout,
    WorkflowFailedError,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``duraflow`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (WorkflowFailedError, ResultTimeout, UpdateFailed, UpdateTimeout) as exc:
        print(f"duraflow: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DuraflowError as exc:
        print(f"duraflow: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of our output went away (`duraflow sql ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: each verb's module adds its subparsers, whose ``run`` default
    is the function that carries the verb out."""
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="duraflow",
        description="Durable workflows on Ray: serve a data directory on a Ray cluster, "
        "and look at or steer its workflows.",
        epilog="Exit codes: 0 done, 1 the workflow failed/was cancelled/terminated, an update "
        "failed, or result/update timed out, 2 error.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # in the order `duraflow --help` lists them
    deploy.add_commands(sub, common)
    workers.add_commands(sub, common)
    runs.add_commands(sub, common)
    control.add_commands(sub, common)
    sql.add_commands(sub, common)
    deploy.add_relocate_archive(sub)
    return parser
