"""Arguments and results of workflows and activities, typed by the functions' annotations.

Arguments are stored as one msgpack array (the format of every recorded history). Each one is
encoded for, and decoded as, its parameter's annotation, so a ``set``, a ``datetime``, a
``UUID``, a ``Decimal``, a msgspec Struct or a dataclass arrives as itself; an activity's
result is typed by its return annotation. A value its annotation does not accept is a
``PayloadError`` naming the parameter. A parameter without a usable annotation (none, ``Any``,
``object``, a type msgspec cannot decode into, a name that does not resolve) is untyped: its
value arrives as msgspec decodes it without a type, and values that would change kind on the
way are refused (see ``storage/codec.py``).

A workflow's result is not typed: clients that read it may not have the workflow's code.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from duraflow.engine.definitions import ActivityDefinition, WorkflowDefinition
from duraflow.storage import codec

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_MISSING: Any = object()


@dataclasses.dataclass(frozen=True)
class PayloadTypes:
    """Declared types of a function's positional parameters and result (None: untyped)."""

    parameters: tuple[tuple[str, Any], ...]
    rest: tuple[str, Any] | None
    """The ``*args`` parameter, if any: every extra argument has its type."""
    result: Any = None
    untyped_parameters: bool = True
    """No parameter declares a type: the arguments decode in one call, as they always did."""

    def parameter(self, index: int) -> tuple[str, Any]:
        """Name and declared type of the parameter that takes positional argument ``index``."""
        if index < len(self.parameters):
            return self.parameters[index]
        if self.rest is not None:
            return f"*{self.rest[0]}", self.rest[1]
        return f"#{index + 1}", None  # one too many: the call itself will say so


def workflow_types(definition: WorkflowDefinition) -> PayloadTypes:
    """Argument types of a workflow (its first parameter, the context, takes no argument)."""
    return _types_of(definition.fn, skip_first=True)


def activity_types(definition: ActivityDefinition) -> PayloadTypes:
    """Argument and result types of an activity."""
    return _types_of(definition.fn, skip_first=False)


def encode_args(types_: PayloadTypes, args: Sequence[Any], role: str) -> bytes:
    """Encode positional arguments, each for its parameter's annotation.

    Args:
        role: who takes them, named in errors (``"workflow 'order'"``).

    Raises:
        PayloadError: an argument cannot be encoded, does not match its annotation, or would
            arrive changed; the message names the parameter.
    """
    parts = []
    for index, value in enumerate(args):
        name, declared = types_.parameter(index)
        parts.append(codec.encode(value, f"argument {name!r} of {role}", declared))
    return codec.join(parts)


def decode_args(types_: PayloadTypes, data: bytes | None, role: str) -> list[Any]:
    """Decode arguments made by :func:`encode_args` (or by an earlier version: the same format).

    Raises:
        PayloadError: an argument does not match its parameter's annotation.
    """
    if types_.untyped_parameters:
        return list(codec.decode(data) or [])
    values = []
    for index, raw in enumerate(codec.split(data)):
        name, declared = types_.parameter(index)
        values.append(codec.decode(raw, declared, f"argument {name!r} of {role}"))
    return values


def encode_result(types_: PayloadTypes, value: Any, role: str) -> bytes:
    """Encode a function's result for its return annotation.

    Raises:
        PayloadError: it cannot be encoded, does not match the annotation, or would arrive
            changed.
    """
    return codec.encode(value, f"result of {role}", types_.result)


def decode_result(types_: PayloadTypes, data: bytes | None, role: str) -> Any:
    """Decode a result made by :func:`encode_result`, as the return annotation says.

    Raises:
        PayloadError: it does not match the return annotation (e.g. the code changed).
    """
    return codec.decode(data, types_.result, f"result of {role}")


@functools.cache
def _types_of(fn: Callable[..., Any], skip_first: bool) -> PayloadTypes:
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some builtins have no signature
        return PayloadTypes((), ("args", None))
    if skip_first and parameters and parameters[0].kind in _POSITIONAL:
        parameters = parameters[1:]
    hints = _hints(fn)
    positional = tuple(
        (p.name, _usable(hints.get(p.name, _MISSING))) for p in parameters if p.kind in _POSITIONAL
    )
    rest = next(
        (
            (p.name, _usable(hints.get(p.name, _MISSING)))
            for p in parameters
            if p.kind is inspect.Parameter.VAR_POSITIONAL
        ),
        None,
    )
    declared = [t for _, t in positional] + ([rest[1]] if rest is not None else [])
    untyped = all(t is None for t in declared)
    return PayloadTypes(positional, rest, _usable(hints.get("return", _MISSING)), untyped)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations of ``fn``; one that does not resolve (a name imported only under
    TYPE_CHECKING, say) is left out instead of losing all the others."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # reason: resolved one by one below
        pass
    globalns = getattr(inspect.unwrap(fn), "__globals__", {})
    hints = {}
    for name, annotation in getattr(fn, "__annotations__", {}).items():
        holder = types.SimpleNamespace(__annotations__={name: annotation})
        try:
            hints[name] = typing.get_type_hints(holder, globalns, include_extras=True)[name]
        except Exception:  # reason: an annotation that does not resolve is no annotation
            continue
    return hints


def _usable(annotation: Any) -> Any:
    """The annotation if msgspec can decode into it, else None (untyped)."""
    if annotation is _MISSING or annotation is Any or annotation is object:
        return None
    try:
        codec.typed_decoder(annotation)
    except (TypeError, ValueError):  # msgspec cannot decode into it
        return None
    return annotation
