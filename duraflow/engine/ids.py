"""Workflow ID validation: IDs are data; only these few shapes are refused."""

from __future__ import annotations

from duraflow.errors import InvalidWorkflowId

MAX_WORKFLOW_ID_BYTES = 1000


def check_workflow_id(workflow_id: object) -> str:
    """Return ``workflow_id`` if it is acceptable.

    Any non-empty string of at most 1,000 UTF-8 bytes without control characters is an ordinary
    ID (``"../x"`` included): IDs never become file names or SQL text.

    Raises:
        InvalidWorkflowId: not a string, empty, too long, holding NUL/control characters, or
            not valid UTF-8 (lone surrogates: SQLite cannot store them).
    """
    if not isinstance(workflow_id, str):
        raise InvalidWorkflowId(f"workflow ID must be a str, got {type(workflow_id).__name__}")
    if not workflow_id:
        raise InvalidWorkflowId("workflow ID must not be empty")
    try:
        size = len(workflow_id.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidWorkflowId(
            f"workflow ID {workflow_id[:60]!r} is not valid UTF-8: it holds lone surrogate "
            f"{exc.object[exc.start]!r}"
        ) from None
    if size > MAX_WORKFLOW_ID_BYTES:
        raise InvalidWorkflowId(
            f"workflow ID is {size} bytes; the limit is {MAX_WORKFLOW_ID_BYTES} bytes"
        )
    for ch in workflow_id:
        if ch < " " or "\x7f" <= ch <= "\x9f":
            raise InvalidWorkflowId(
                f"workflow ID {workflow_id[:60]!r} holds control character {ch!r}"
            )
    return workflow_id
