"""What the ``duraflow`` command's verbs share in their answers: the exit codes and JSON for
people."""

from __future__ import annotations

from typing import Any

import msgspec

from duraflow.storage.codec import to_json

EXIT_FAILED = 1
"""The workflow failed, was cancelled or terminated, or ``result`` timed out."""
EXIT_ERROR = 2
"""Bad input, no such workflow, nothing served, Ray unreachable, a bad SQL query."""


def print_json(value: Any) -> None:
    print(msgspec.json.format(to_json(value), indent=2))
