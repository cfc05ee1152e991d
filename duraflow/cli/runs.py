"""The workflow verbs of the ``duraflow`` command: ``list`` runs, ``describe``, ``signal``,
``update``, ``cancel``, ``terminate`` one, and wait for its ``result``, each a thin call on a
Client."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from duraflow.cli.args import json_object, json_value, positive
from duraflow.cli.output import print_json
from duraflow.client.client import Client
from duraflow.client.handle import NO_PAYLOAD
from duraflow.storage.codec import to_json


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """``list``, then the verbs on one workflow ID: ``describe``, ``signal``, ``update``,
    ``cancel``, ``terminate``, ``result``."""
    p = sub.add_parser("list", parents=[common], help="workflow runs, newest first (JSON lines)")
    p.add_argument("--status", help="running, completed, failed, cancelled or terminated")
    p.add_argument("--type", help="workflow type name")
    p.add_argument("--limit", type=positive(int), default=1000, help="default %(default)s")
    p.add_argument(
        "--search",
        metavar="JSON",
        type=json_object,
        help='runs whose search attributes have these values, e.g. \'{"customer": "c-9"}\'',
    )
    p.set_defaults(run=_with_client(_list))

    def run_command(name: str, help: str, command: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help)
        p.add_argument("workflow_id", metavar="ID", help="workflow ID")
        p.add_argument("--run-id", help="a run of the ID (default: its latest run)")
        p.set_defaults(run=_with_client(command))
        return p

    run_command("describe", "status, type, times, history length of a workflow (JSON)", _describe)
    p = run_command("signal", "send a signal to a workflow", _signal)
    p.add_argument("name", metavar="NAME", help="signal name")
    p.add_argument(
        "payload", metavar="JSON", type=json_value, nargs="?", help="payload (default null)"
    )
    p = run_command("update", "run a workflow's update handler; print its result (JSON)", _update)
    p.add_argument("name", metavar="NAME", help="update name")
    p.add_argument(
        "payload", metavar="JSON", type=json_value, nargs="?", help="payload (default: none)"
    )
    p.add_argument("--timeout", type=positive(float), default=None, help="seconds (default: wait)")
    p.add_argument("--request-id", help="resend with the same ID to get the result of one run")
    p = run_command("cancel", "ask a workflow to cancel (it may clean up)", _cancel)
    p.add_argument("--reason", default="", help="why")
    p = run_command(
        "terminate", "close a workflow at once, running no more of its code", _terminate
    )
    p.add_argument("--reason", default="", help="why (recorded)")
    p = run_command("result", "wait for a workflow's result and print it (JSON)", _result)
    p.add_argument("--timeout", type=positive(float), default=None, help="seconds (default: wait)")


def _with_client(command: Callable[[Client, argparse.Namespace], int | None]) -> Any:
    def run(args: argparse.Namespace) -> int | None:
        client = Client.connect(args.address, namespace=args.namespace)
        try:
            return command(client, args)
        finally:
            client.close()

    return run


def _list(client: Client, args: argparse.Namespace) -> None:
    for description in client.list(args.status, args.type, args.limit, search=args.search):
        print(to_json(description))


def _describe(client: Client, args: argparse.Namespace) -> None:
    print_json(client.get_handle(args.workflow_id, args.run_id).describe())


def _signal(client: Client, args: argparse.Namespace) -> None:
    client.get_handle(args.workflow_id, args.run_id).signal(args.name, args.payload)
    print(f"signal {args.name!r} sent to {args.workflow_id!r}")


def _update(client: Client, args: argparse.Namespace) -> None:
    handle = client.get_handle(args.workflow_id, args.run_id)
    payload = NO_PAYLOAD if args.payload is None else args.payload
    print_json(handle.update(args.name, payload, timeout=args.timeout, request_id=args.request_id))


def _cancel(client: Client, args: argparse.Namespace) -> None:
    client.get_handle(args.workflow_id, args.run_id).cancel(args.reason)
    print(f"cancellation requested for {args.workflow_id!r}")


def _terminate(client: Client, args: argparse.Namespace) -> None:
    client.get_handle(args.workflow_id, args.run_id).terminate(args.reason)
    print(f"terminated {args.workflow_id!r}")


def _result(client: Client, args: argparse.Namespace) -> None:
    print_json(client.get_handle(args.workflow_id, args.run_id).result(args.timeout))
