"""The verbs of the ``duraflow`` command that start and steer workflows: ``start`` a type by
name, ``query`` a run, ``pause`` / ``unpause`` it and ``reset`` it, each a thin call on a
Client (the served deployment's partitions resolve a type name; this process imports no app)."""

from __future__ import annotations

import argparse
from typing import Any

from duraflow.actors.messages import ID_CONFLICT_POLICIES
from duraflow.cli.args import json_value, positive
from duraflow.cli.output import print_json
from duraflow.cli.runs import _with_client as with_client
from duraflow.client.client import Client


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """``start``, then ``query``, ``pause``, ``unpause`` and ``reset`` of one workflow ID."""
    p = sub.add_parser(
        "start",
        parents=[common],
        help="start a workflow by type name (prints its ID and run ID as JSON)",
        description="Start a run of workflow type TYPE, which the served deployment knows "
        "(its --app modules); this command imports no workflow code.",
    )
    p.add_argument("workflow_type", metavar="TYPE", help="workflow type name")
    p.add_argument(
        "args",
        metavar="ARGS_JSON",
        type=_json_array,
        nargs="?",
        default=[],
        help="the arguments, as a JSON array (default []): '[{\"id\": 7}, 2]'",
    )
    p.add_argument("--id", dest="workflow_id", help="workflow ID (default: a random one)")
    p.add_argument(
        "--id-conflict",
        choices=ID_CONFLICT_POLICIES,
        default="fail",
        help="when the ID's latest run is still open (default %(default)s)",
    )
    p.set_defaults(run=with_client(_start))

    def run_command(name: str, help: str, command: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help)
        p.add_argument("workflow_id", metavar="ID", help="workflow ID")
        p.add_argument("--run-id", help="a run of the ID (default: its latest run)")
        p.set_defaults(run=with_client(command))
        return p

    p = run_command("query", "ask a workflow's query handler (prints the answer as JSON)", _query)
    p.add_argument("name", metavar="NAME", help="query name")
    p.add_argument(
        "args", metavar="ARGS_JSON", type=_json_array, nargs="?", default=[], help="JSON array"
    )
    p.add_argument("--timeout", type=positive(float), default=None, help="seconds (default: wait)")
    p = run_command("pause", "pause a workflow: nothing new is dispatched until unpause", _pause)
    p.add_argument("--reason", default="", help="why (recorded)")
    p = run_command("unpause", "unpause a workflow: what its pause held goes out", _unpause)
    p.add_argument("--reason", default="", help="why (recorded)")
    p = run_command(
        "reset", "start a new run from a closed run's history (prints its run ID)", _reset
    )
    p.add_argument(
        "--to",
        type=_reset_point,
        default="last_failure",
        help="'last_failure' (default: before the run's first failure) or an event ID",
    )
    p.add_argument("--reason", default="", help="why (recorded in the new run)")


def _json_array(text: str) -> list[Any]:
    value = json_value(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(
            f"expected a JSON array of arguments, like '[{{\"id\": 7}}]', got: {text}"
        )
    return value


def _reset_point(text: str) -> str | int:
    if text == "last_failure":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'last_failure' or an event ID (a whole number), got {text!r}"
        ) from None


def _start(client: Client, args: argparse.Namespace) -> None:
    handle = client.start(
        args.workflow_type, *args.args, workflow_id=args.workflow_id, id_conflict=args.id_conflict
    )
    print_json({"workflow_id": handle.workflow_id, "run_id": handle.run_id})


def _query(client: Client, args: argparse.Namespace) -> None:
    handle = client.get_handle(args.workflow_id, args.run_id)
    print_json(handle.query(args.name, *args.args, timeout=args.timeout))


def _pause(client: Client, args: argparse.Namespace) -> None:
    client.get_handle(args.workflow_id, args.run_id).pause(args.reason)
    print(f"paused {args.workflow_id!r}")


def _unpause(client: Client, args: argparse.Namespace) -> None:
    client.get_handle(args.workflow_id, args.run_id).unpause(args.reason)
    print(f"unpaused {args.workflow_id!r}")


def _reset(client: Client, args: argparse.Namespace) -> None:
    run_id = client.get_handle(args.workflow_id, args.run_id).reset(args.to, args.reason)
    print_json({"workflow_id": args.workflow_id, "run_id": run_id})
