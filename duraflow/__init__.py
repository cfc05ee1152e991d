"""duraflow: durable workflows in plain async Python, with history you can query.

The public API is exactly the names in ``__all__``; everything else may change.
"""

from duraflow.cdc import events
from duraflow.cdc.subscribers import Subscription
from duraflow.client.client import Client
from duraflow.client.handle import WorkflowHandle
from duraflow.config import S3Config, WorkerPool
from duraflow.description import WorkflowDescription
from duraflow.engine.activities import ActivityInfo, activity_info, heartbeat
from duraflow.engine.context import (
    ChildWorkflowHandle,
    ExternalWorkflowHandle,
    WorkflowContext,
    WorkflowInfo,
)
from duraflow.engine.definitions import activity, workflow
from duraflow.engine.retry import RetryPolicy
from duraflow.errors import (
    ActivityCancelledError,
    ActivityError,
    ChildWorkflowError,
    ConfigurationError,
    DuraflowError,
    InvalidDuration,
    InvalidWorkflowId,
    NonDeterminismError,
    NoParentWorkflow,
    NotAnActivityError,
    PartitionFenced,
    PartitionUnavailable,
    PayloadError,
    QueryError,
    QueryFailed,
    QueryTimeout,
    RequestFailed,
    ResetError,
    ResultTimeout,
    StatementNotAllowed,
    UnknownActivity,
    UnknownQuery,
    UnknownWorkflowType,
    UpdateFailed,
    UpdateRejected,
    UpdateTimeout,
    WorkflowAlreadyRunning,
    WorkflowBlocked,
    WorkflowCancelledError,
    WorkflowClosed,
    WorkflowCodeError,
    WorkflowFailedError,
    WorkflowNotFound,
    WorkflowTerminatedError,
    WorkflowTimedOutError,
)
from duraflow.runtime import Engine

__version__ = "0.1.0"

__all__ = [
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
    "WorkflowTimedOutError",
    "activity",
    "activity_info",
    "events",
    "heartbeat",
    "workflow",
]
