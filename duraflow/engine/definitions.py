"""@workflow and @activity, and the registry they fill."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import math
import os
import sys
import threading
import types
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from duraflow.config import check_queue
from duraflow.engine.retry import Duration, RetryPolicy, check_retry, parse_timeout, short
from duraflow.errors import (
    ConfigurationError,
    NotAnActivityError,
    UnknownActivity,
    UnknownWorkflowType,
)

F = TypeVar("F", bound=Callable[..., Any])


def check_name(value: object, what: str) -> str | None:
    """``value`` if it is None or a name: a non-empty str without control characters.

    Raises:
        ConfigurationError: anything else, named.
    """
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value.strip()
        or any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000 for c in value)
    ):
        raise ConfigurationError(
            f"{what} must be a non-empty str without control characters, got {short(value)}"
        )
    return value


def _ray_options(
    num_cpus: object, num_gpus: object, resources: object, runtime_env: object
) -> dict[str, Any]:
    """The Ray options an activity gives (those not None), checked."""
    for what, amount in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if amount is not None and not _is_amount(amount):
            raise ConfigurationError(
                f"{what} must be a finite number >= 0, or None (Ray's default), got {short(amount)}"
            )
    if resources is not None and (
        not isinstance(resources, dict)
        or not all(isinstance(k, str) and k and _is_amount(v) for k, v in resources.items())
    ):
        raise ConfigurationError(
            f"resources must be a dict of resource names to finite amounts >= 0, "
            f"got {short(resources)}"
        )
    if runtime_env is not None and not isinstance(runtime_env, dict):
        raise ConfigurationError(
            f"runtime_env must be a dict (Ray's runtime_env) or None, got {short(runtime_env)}"
        )
    given = {
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "resources": resources,
        "runtime_env": runtime_env,
    }
    return {key: value for key, value in given.items() if value is not None}


def _check_queue(queue: object, inline: bool, ray_options: dict[str, Any]) -> None:
    if queue is None:
        return
    check_queue(queue)
    if inline or ray_options:
        raise ConfigurationError(
            f"queue={queue!r} cannot go with inline or num_cpus / num_gpus / resources / "
            "runtime_env: the worker pool of a queue carries the resources (df.WorkerPool)"
        )


def _is_amount(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf


class ActivityOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Retry policy and timeouts of one scheduled activity (seconds; None means no limit)."""

    retry: RetryPolicy = RetryPolicy()
    start_to_close_timeout: float | None = None
    schedule_to_close_timeout: float | None = None
    heartbeat_timeout: float | None = None


@dataclasses.dataclass(frozen=True)
class WorkflowDefinition:
    """A registered workflow: its type name, function and where to import it from."""

    name: str
    fn: Callable[..., Any]
    code_ref: str
    code_hash: str


@dataclasses.dataclass(frozen=True)
class ActivityDefinition:
    """A registered activity: name, function, default options, and how it runs."""

    name: str
    fn: Callable[..., Any]
    code_ref: str
    options: ActivityOptions
    is_async: bool
    inline: bool = False
    ray_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    queue: str | None = None
    """The worker pool that runs it on Ray (None: the default pool, unless ``inline`` or
    ``ray_options`` say otherwise)."""


_lock = threading.Lock()
_workflows: dict[str, WorkflowDefinition] = {}
_activities: dict[str, ActivityDefinition] = {}


def _code_ref(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


def _code_hash(fn: Callable[..., Any]) -> str:
    """A short hash of a workflow function's code: its bytecode, the names and constants it
    uses, and those of the functions and lambdas defined in it (recorded in
    ``workflow.started``; ``describe()`` shows when the code changed since)."""
    code = getattr(fn, "__code__", None)
    digest = hashlib.blake2b(digest_size=8)
    if code is None:
        digest.update(_code_ref(fn).encode())
    else:
        _hash_code(code, digest)
    return digest.hexdigest()


def _hash_code(code: types.CodeType, digest: Any) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _hash_code(const, digest)
        elif isinstance(const, frozenset):  # its order varies with the hash seed
            digest.update(repr(sorted(map(repr, const))).encode())
        else:
            digest.update(repr(const).encode())


def workflow(fn: F | None = None, *, name: str | None = None) -> Any:
    """Register an ``async def f(ctx, *args)`` as a workflow type.

    Usable bare (``@workflow``) or with a name (``@workflow(name="orders.v2")``); the type name
    defaults to the function's name. The function is returned unchanged, so it can be passed to
    ``client.start`` and ``ctx.start_child``.

    Raises:
        TypeError: the function is not ``async def``.
        ConfigurationError: ``name`` is not a non-empty str without control characters.
    """

    check_name(name, "@workflow name")

    def register(f: F) -> F:
        if not inspect.iscoroutinefunction(f):
            raise TypeError(f"@workflow needs an 'async def' function, got {f!r}")
        definition = WorkflowDefinition(name or f.__name__, f, _code_ref(f), _code_hash(f))
        with _lock:
            _workflows[definition.name] = definition
        f.__duraflow_workflow__ = definition  # type: ignore[attr-defined]  # reason: tag the function
        return f

    return register(fn) if fn is not None else register


def activity(
    fn: F | None = None,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    start_to_close_timeout: Duration | None = None,
    schedule_to_close_timeout: Duration | None = None,
    heartbeat_timeout: Duration | None = None,
    inline: bool = False,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    runtime_env: dict[str, Any] | None = None,
    queue: str | None = None,
) -> Any:
    """Register a function (sync or async) as an activity: an at-least-once unit of work.

    Args:
        name: the activity name recorded in history (defaults to the function name).
        retry: the retry policy (default: Temporal's, 1 s doubling to 100 s, unlimited attempts).
        start_to_close_timeout: limit for one attempt, from when it starts running (a Ray
            task waiting for a worker or for its resources has not started yet).
        schedule_to_close_timeout: limit for all attempts together, retries included.
        heartbeat_timeout: an attempt fails if it does not call ``heartbeat()`` this often
            (from when it starts running, like ``start_to_close_timeout``).
        inline: run in the partition's own process (threads for sync functions, its event
            loop for async ones) instead of on a worker pool: for cheap steps. Activities
            always run inline on the in-process runtime.
        num_cpus, num_gpus, resources, runtime_env: run each attempt as a Ray task asking
            for these (instead of on a worker pool).
        queue: the worker pool that runs it on Ray (``df.Engine(workers={queue: ...})`` or
            ``duraflow worker --queue``); without one, and without Ray options, it runs on
            the engine's default pool. The pool carries the resources: a queue cannot be
            combined with Ray options or ``inline``.

    The function is returned unchanged and can still be called directly.

    Raises:
        InvalidDuration: a timeout that is not a duration, is 0, negative or over 100 years.
        ConfigurationError: ``retry`` that is not a RetryPolicy, ``num_cpus`` / ``num_gpus``
            / ``resources`` amounts that are not finite numbers >= 0, a ``runtime_env`` that
            is not a dict, an empty ``name``, ``inline`` that is not a bool, a ``queue``
            that is not a queue name or comes with Ray options or ``inline``.
    """
    check_name(name, "@activity name")
    check_retry(retry)
    if not isinstance(inline, bool):
        raise ConfigurationError(f"inline must be True or False, got {short(inline)}")
    ray_options = _ray_options(num_cpus, num_gpus, resources, runtime_env)
    _check_queue(queue, inline, ray_options)
    options = ActivityOptions(
        retry=retry or RetryPolicy(),
        start_to_close_timeout=parse_timeout(start_to_close_timeout, "start_to_close_timeout"),
        schedule_to_close_timeout=parse_timeout(
            schedule_to_close_timeout, "schedule_to_close_timeout"
        ),
        heartbeat_timeout=parse_timeout(heartbeat_timeout, "heartbeat_timeout"),
    )

    def register(f: F) -> F:
        definition = ActivityDefinition(
            name or f.__name__,
            f,
            _code_ref(f),
            options,
            inspect.iscoroutinefunction(f),
            inline=inline,
            ray_options=ray_options,
            queue=queue,
        )
        with _lock:
            _activities[definition.name] = definition
        f.__duraflow_activity__ = definition  # type: ignore[attr-defined]  # reason: tag the function
        return f

    return register(fn) if fn is not None else register


def workflow_definition(fn_or_name: Callable[..., Any] | str) -> WorkflowDefinition:
    """The definition of a decorated workflow function or a registered type name.

    Raises:
        UnknownWorkflowType: not decorated with ``@workflow`` / no such name registered.
    """
    if isinstance(fn_or_name, str):
        found = _workflows.get(fn_or_name)
        if found is None:
            raise UnknownWorkflowType(
                f"unknown workflow type {fn_or_name!r}: no @workflow of that name is registered "
                f"(known: {sorted(_workflows)[:20]})"
            )
        return found
    definition = getattr(fn_or_name, "__duraflow_workflow__", None)
    if not isinstance(definition, WorkflowDefinition):
        raise UnknownWorkflowType(f"{fn_or_name!r} is not a workflow: decorate it with @workflow")
    return definition


def activity_definition(fn: Callable[..., Any]) -> ActivityDefinition:
    """The definition of a decorated activity function.

    Raises:
        NotAnActivityError: ``fn`` is not decorated with ``@activity``.
    """
    definition = getattr(fn, "__duraflow_activity__", None)
    if not isinstance(definition, ActivityDefinition):
        raise NotAnActivityError(
            f"{fn!r} is not an activity: decorate it with @duraflow.activity before passing it "
            "to ctx.activity()"
        )
    return definition


def resolve_workflow(name: str, code_ref: str = "") -> WorkflowDefinition:
    """Find a workflow type by name, importing ``module:qualname`` from history if needed.

    Raises:
        UnknownWorkflowType: not registered; when ``code_ref`` names a module, the message says
            whether this process could not import it (with the import error, the ``sys.path``
            it searched and what to do) or imported it and found no such workflow there.
    """
    found = _workflows.get(name)
    if found is None and code_ref:
        problem = _import_module_of(code_ref)
        found = _workflows.get(name)
        if found is None:
            raise UnknownWorkflowType(
                f"unknown workflow type {name!r}: {_why_missing('workflow', code_ref, problem)}"
            )
    if found is None:
        raise UnknownWorkflowType(
            f"unknown workflow type {name!r}: no @workflow of that name is registered in "
            f"{_this_process()} (registered there: {registered_workflows()}); serve the "
            "module that defines it (`duraflow serve --app MODULE`), or import it before "
            "opening the engine"
        )
    return found


def registered_workflows(limit: int = 50) -> list[str]:
    """The workflow type names registered in this process, sorted (at most ``limit``)."""
    with _lock:
        return sorted(_workflows)[:limit]


def find_workflow(name: str) -> WorkflowDefinition | None:
    """The workflow type registered as ``name`` in this process, if any."""
    return _workflows.get(name)


def resolve_activity(name: str, code_ref: str = "") -> ActivityDefinition:
    """Find an activity by name, importing ``module:qualname`` from history if needed.

    Raises:
        UnknownActivity: as :func:`resolve_workflow` says for workflow types.
    """
    found = _activities.get(name)
    if found is None and code_ref:
        problem = _import_module_of(code_ref)
        found = _activities.get(name)
        if found is None:
            raise UnknownActivity(
                f"unknown activity {name!r}: {_why_missing('activity', code_ref, problem)}"
            )
    if found is None:
        raise UnknownActivity(
            f"unknown activity {name!r}: no @activity of that name is registered in "
            f"{_this_process()}; import the module that defines it before opening the engine"
        )
    return found


def main_module_definitions() -> list[WorkflowDefinition | ActivityDefinition]:
    """Definitions made in ``__main__``: a script's, which other processes cannot import."""
    with _lock:
        found: list[WorkflowDefinition | ActivityDefinition] = [
            d
            for d in (*_workflows.values(), *_activities.values())
            if d.code_ref.startswith("__main__:")
        ]
    return found


def register_definitions(definitions: list[WorkflowDefinition | ActivityDefinition]) -> None:
    """Register definitions shipped from another process (by value, for development)."""
    with _lock:
        for definition in definitions:
            if isinstance(definition, WorkflowDefinition):
                _workflows[definition.name] = definition
            else:
                _activities[definition.name] = definition


# -- why recorded code cannot be found ------------------------------------------------------------

_process_role = ""
SEARCH_PATH_SHOWN = 8
"""``sys.path`` entries an import error lists (those of the Python installation are counted)."""


def set_process_role(role: str) -> None:
    """Say what this process is (``"the Ray partition actor 3"``) in errors about code it
    cannot import; a host calls it once when it starts."""
    global _process_role
    _process_role = role


def _this_process() -> str:
    return f"{_process_role or 'this process'} (pid {os.getpid()})"


def _import_module_of(code_ref: str) -> BaseException | None:
    """Import the module of ``module:qualname``; what went wrong, or None."""
    module = code_ref.partition(":")[0]
    if not module or module == "__main__" or module in sys.modules:
        return None
    try:
        importlib.import_module(module)
    except Exception as exc:  # reason: any error raised by the module's import is reported
        return exc
    return None


def _why_missing(kind: str, code_ref: str, problem: BaseException | None) -> str:
    """Why the registry has no entry for code recorded as ``code_ref``, and what to do."""
    module, _, qualname = code_ref.partition(":")
    if module == "__main__":
        return (
            f"it was recorded as {code_ref!r}, a script's __main__, which {_this_process()} "
            f"cannot import: define the @{kind} in a module, or open the engine from that "
            "script again"
        )
    if problem is None:
        return (
            f"{_this_process()} imported module {module!r}, but it registers no @{kind} of "
            f"that name (recorded as {code_ref!r}): was {qualname!r} renamed, removed or "
            f"left undecorated? Make it an @{kind} of that name again"
        )
    return (
        f"{_this_process()} could not import module {module!r} (recorded as {code_ref!r}): "
        f"{type(problem).__name__}: {problem}. It searched sys.path {_search_path()}. "
        f"Make {module!r} importable there: serve with `duraflow serve --app {module}`, start "
        "the driver from the directory that holds it (Ray puts the driver's working "
        "directory on its actors' sys.path), or ship it with Ray's runtime_env "
        f"(ray.init(runtime_env={{'py_modules': [{module}]}}) before opening the engine)"
    )


def _search_path() -> str:
    """``sys.path`` for an error message: the Python installation's entries only counted."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    # <prefix>/lib holds the standard library, lib-dynload and site-packages (lib64, Lib too)
    install = tuple(os.path.normcase(os.path.join(p, "lib")) for p in prefixes)
    ours: list[str] = []
    theirs = 0
    for entry in dict.fromkeys(sys.path):  # once each, in order
        if os.path.normcase(entry).startswith(install):
            theirs += 1
        else:
            ours.append(repr(entry) if entry else f"'' (the working directory, {os.getcwd()!r})")
    shown = ours[:SEARCH_PATH_SHOWN]
    more = len(ours) - len(shown)
    text = ", ".join(shown) + (f", and {more} more" if more else "")
    return f"[{text}] and {theirs} entries of the Python installation"
