"""The public facade is the contract: pinned names, each documented."""

from __future__ import annotations

import duraflow as df
import duraflow.testing

CONTRACT_NAMES = [
    "ActivityCancelledError",
    "ActivityError",
    "ActivityInfo",
    "ChildWorkflowError",
    "ChildWorkflowHandle",
    "Client",
    "ConfigurationError",
    "DuraflowError",
    "Engine",
    "ExternalWorkflowHandle",
    "InvalidDuration",
    "InvalidWorkflowId",
    "NoParentWorkflow",
    "NonDeterminismError",
    "NotAnActivityError",
    "PartitionFenced",
    "PartitionUnavailable",
    "PayloadError",
    "QueryError",
    "QueryFailed",
    "QueryTimeout",
    "RequestFailed",
    "ResetError",
    "ResultTimeout",
    "RetryPolicy",
    "S3Config",
    "StatementNotAllowed",
    "Subscription",
    "UnknownActivity",
    "UnknownQuery",
    "UnknownWorkflowType",
    "UpdateFailed",
    "UpdateRejected",
    "UpdateTimeout",
    "WorkerPool",
    "WorkflowAlreadyRunning",
    "WorkflowBlocked",
    "WorkflowCancelledError",
    "WorkflowClosed",
    "WorkflowCodeError",
    "WorkflowContext",
    "WorkflowDescription",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowNotFound",
    "WorkflowTerminatedError",
    "activity",
    "activity_info",
    "events",
    "heartbeat",
    "workflow",
]

TESTING_NAMES = ["Replayer", "WorkflowEnvironment", "load_history", "save_history"]
"""duraflow.testing (DESIGN section 11), public as a module of its own."""


def test_public_names_are_the_documented_contract() -> None:
    assert sorted(CONTRACT_NAMES) == sorted(df.__all__)


def test_every_public_name_has_a_docstring() -> None:
    undocumented = [name for name in df.__all__ if not getattr(df, name).__doc__]
    assert [] == undocumented


def test_the_testing_module_is_pinned_and_documented() -> None:
    testing = duraflow.testing
    assert sorted(TESTING_NAMES) == sorted(testing.__all__)
    assert [] == [name for name in testing.__all__ if not getattr(testing, name).__doc__]


def test_every_error_derives_from_the_root() -> None:
    errors = [getattr(df, n) for n in df.__all__ if n.endswith(("Error", "Timeout"))]
    errors += [df.InvalidWorkflowId, df.UnknownWorkflowType, df.WorkflowNotFound]
    errors += [df.StatementNotAllowed, df.UpdateRejected, df.UpdateFailed]
    assert [] == [e.__name__ for e in errors if not issubclass(e, df.DuraflowError)]
