"""Arguments of the ``duraflow`` command: the options every verb takes, and the parsers of
durations, resources, JSON values and positive numbers (argparse ``type=`` functions)."""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from typing import Any

import msgspec

from duraflow.config import DEFAULT_NAMESPACE, WorkerPool
from duraflow.engine.retry import parse_duration
from duraflow.errors import ConfigurationError, InvalidDuration

DEFAULT_ADDRESS = "auto"
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def common_options() -> argparse.ArgumentParser:
    """The parent parser of the verbs that reach a deployment: ``--address``, ``--namespace``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address",
        default=DEFAULT_ADDRESS,
        help="the Ray cluster: 'auto' (default) on one of its nodes, or the head's host:port "
        "(then set RAY_AUTH_MODE=token when the cluster uses token authentication)",
    )
    common.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help="the Ray namespace of the deployment (default: %(default)s)",
    )
    return common


def json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text}") from None
    except RecursionError:  # the parser recurses once per level
        raise argparse.ArgumentTypeError(f"JSON nested too deeply: {text[:40]}...") from None


def json_object(text: str) -> dict[str, Any]:
    value = json_value(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text[:40]}")
    return value


def resources(text: str) -> dict[str, float]:
    value = json_value(text)
    if not (
        isinstance(value, dict)
        and all(isinstance(v, (int, float)) and v > 0 for v in value.values())
    ):
        raise argparse.ArgumentTypeError(
            f'expected a JSON object of resource amounts > 0, like {{"duraflow": 1}}: {text}'
        )
    return {str(k): float(v) for k, v in value.items()}


def worker_pools(text: str) -> dict[str, WorkerPool]:
    """``{"gpu": {"size": 4, "num_gpus": 1}}``: worker pools by queue name."""
    value = json_value(text)
    try:
        return msgspec.convert(value, dict[str, WorkerPool])
    except (msgspec.ValidationError, ConfigurationError) as exc:
        raise argparse.ArgumentTypeError(
            f'expected a JSON object of queue names to pools, like {{"gpu": {{"size": 4, '
            f'"num_gpus": 1}}}}: {exc}'
        ) from None


def duration(text: str) -> float:
    """Seconds (``90``) or a duration string (``1m30s``)."""
    try:
        return parse_duration(float(text) if _NUMBER.fullmatch(text.strip()) else text)
    except InvalidDuration as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_or_never(text: str) -> float | None:
    return None if text.strip().lower() == "never" else duration(text)


def positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"must be > 0 and finite, got {text}")
        return value

    return parse
