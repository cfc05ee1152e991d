"""Bad input: every mistake gives a clear error, and loses nothing durable.

Each test asserts the error class *and* that its message names what was wrong, then shows that
what was already durable is intact: a "keeper" workflow started before the mistake still
answers queries, takes signals and completes with everything it was sent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import gc
import os
import re
import sqlite3
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

import duraflow as df

# -- workflows and activities (names prefixed bad_: the registry is global) -------------------


@df.workflow
async def bad_keeper(ctx: df.WorkflowContext, label: str) -> dict:
    """Collects "item" signals until a "stop" signal, answering queries meanwhile."""
    items: list[Any] = []
    ctx.set_query_handler("items", lambda: list(items))
    ctx.set_query_handler("label", lambda: label)
    ctx.set_query_handler("fails", lambda: 1 / 0)
    ctx.set_query_handler("unencodable", lambda: object())
    while True:
        signal_wait = asyncio.ensure_future(ctx.wait_for_signal("item"))
        stop_wait = asyncio.ensure_future(ctx.wait_for_signal("stop"))
        done, _ = await asyncio.wait({signal_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if signal_wait in done:
            items.append(signal_wait.result())
            stop_wait.cancel()
            continue
        signal_wait.cancel()
        return {"label": label, "items": items}


@df.workflow
async def bad_echo(ctx: df.WorkflowContext, value: Any) -> Any:
    return value


@df.workflow
async def bad_wait_then_echo(ctx: df.WorkflowContext, value: Any) -> Any:
    await ctx.wait_for_signal("go")
    return value


@df.workflow
async def bad_raises(ctx: df.WorkflowContext, message: str) -> None:
    raise ValueError(message)


class BadOrderError(Exception):
    pass


@df.workflow
async def bad_raises_custom(ctx: df.WorkflowContext) -> None:
    raise BadOrderError("order 7 has no items")


@df.workflow
async def bad_returns_object(ctx: df.WorkflowContext) -> Any:
    return object()


@df.activity(retry=df.RetryPolicy(initial_interval=0.01, maximum_attempts=5))
def bad_act_returns_object() -> Any:
    _count("bad_act_returns_object")
    return object()


@df.activity
def bad_act_echo(value: Any) -> Any:
    return value


@df.workflow
async def bad_wf_activity_returns_object(ctx: df.WorkflowContext) -> dict:
    try:
        await ctx.activity(bad_act_returns_object)
    except df.ActivityError as exc:
        return {
            "cause_type": exc.cause_type,
            "cause_message": exc.cause_message,
            "attempts": exc.attempts,
        }
    return {}


@df.workflow
async def bad_wf_activity_object_argument(ctx: df.WorkflowContext) -> str:
    try:
        await ctx.activity(bad_act_echo, object())
    except df.PayloadError as exc:
        return f"caught: {exc}"
    return "not caught"


@df.activity(retry=df.RetryPolicy(initial_interval=0.01, maximum_attempts=5))
def bad_act_returns_surrogate() -> str:
    return os.fsdecode(b"name-\xff")


@df.workflow
async def bad_wf_activity_returns_surrogate(ctx: df.WorkflowContext) -> dict:
    try:
        await ctx.activity(bad_act_returns_surrogate)
    except df.ActivityError as exc:
        return {
            "cause_type": exc.cause_type,
            "cause_message": exc.cause_message,
            "attempts": exc.attempts,
        }
    return {}


@df.activity(retry=df.RetryPolicy(initial_interval=0.01, maximum_attempts=2))
def bad_act_opens_undecodable_path() -> None:
    """Fails with an OSError whose message holds a lone surrogate, as real file code does."""
    with open(os.fsdecode(b"/nonexistent-duraflow-dir/\xff.txt")):
        pass


@df.workflow
async def bad_wf_undecodable_error(ctx: df.WorkflowContext, catch: bool) -> dict:
    try:
        await ctx.activity(bad_act_opens_undecodable_path)
    except df.ActivityError as exc:
        if not catch:
            raise RuntimeError("giving up on " + os.fsdecode(b"\xff")) from None
        return {
            "cause_type": exc.cause_type,
            "cause_message": exc.cause_message,
            "attempts": exc.attempts,
        }
    return {}


@df.activity
async def bad_act_never_returns() -> None:
    await asyncio.Event().wait()


@df.activity
def bad_act_sync_never_returns() -> None:
    """Never returns on its own; heartbeat() raises once the attempt is no longer wanted."""
    while True:
        try:
            df.heartbeat()
        except df.ActivityCancelledError:
            _count("bad_act_sync_never_returns cancelled")
            raise
        time.sleep(0.01)


@df.workflow
async def bad_wf_never_returns(ctx: df.WorkflowContext, sync: bool) -> None:
    await ctx.activity(
        bad_act_sync_never_returns if sync else bad_act_never_returns,
        start_to_close_timeout=0.1,
        retry=df.RetryPolicy(maximum_attempts=1),
    )


def bad_not_an_activity(x: int) -> int:
    return x


async def bad_not_a_workflow(ctx: df.WorkflowContext) -> None:
    return None


@df.workflow
async def bad_wf_calls_non_activity(ctx: df.WorkflowContext, catch: bool) -> str:
    try:
        await ctx.activity(bad_not_an_activity, 1)
    except df.NotAnActivityError as exc:
        if not catch:
            raise
        return f"caught: {exc}"
    return "not caught"


@df.workflow
async def bad_wf_sleep(ctx: df.WorkflowContext, duration: Any) -> str:
    await ctx.sleep(duration)
    return "slept"


@df.workflow
async def bad_wf_activity_duration(ctx: df.WorkflowContext, duration: Any) -> str:
    try:
        await ctx.activity(bad_act_echo, 1, start_to_close_timeout=duration)
    except df.InvalidDuration as exc:
        return f"caught: {exc}"
    return "not caught"


@df.workflow
async def bad_wf_child_bad_id(ctx: df.WorkflowContext) -> str:
    try:
        await ctx.start_child(bad_echo, 1, workflow_id="a\x00b")
    except df.InvalidWorkflowId as exc:
        return f"caught: {exc}"
    return "not caught"


@df.workflow
async def bad_wf_child_of_unknown_type(ctx: df.WorkflowContext) -> str:
    try:
        await ctx.start_child("bad_no_such_child_type")
    except df.UnknownWorkflowType as exc:
        return f"caught: {exc}"
    return "not caught"


@df.workflow
async def bad_wf_counts(ctx: df.WorkflowContext, count: int) -> int:
    return count


@df.activity(retry=df.RetryPolicy(initial_interval=0.01, maximum_attempts=5))
def bad_act_counts(count: int) -> int:
    return count


@df.activity(retry=df.RetryPolicy(initial_interval=0.01, maximum_attempts=5))
def bad_act_says_int() -> int:
    _count("bad_act_says_int")
    return "five"  # type: ignore[return-value]  # reason: the mistake under test


@df.activity(retry=df.RetryPolicy(initial_interval=0.01, maximum_attempts=5))
def bad_act_returns(value_kind: str) -> Any:
    _count(f"bad_act_returns {value_kind}")
    return {"set": lambda: {1, 2}, "deep": lambda: nested_list(100_000)}[value_kind]()


@df.workflow
async def bad_wf_activity_mistakes(ctx: df.WorkflowContext, mistake: str) -> dict:
    try:
        if mistake == "argument":
            await ctx.activity(bad_act_counts, "five")
        elif mistake == "annotated result":
            await ctx.activity(bad_act_says_int)
        else:
            await ctx.activity(bad_act_returns, mistake)
    except df.PayloadError as exc:
        return {"caught": "PayloadError", "message": str(exc)}
    except df.ActivityError as exc:
        return {
            "caught": "ActivityError",
            "cause_type": exc.cause_type,
            "message": exc.cause_message,
            "attempts": exc.attempts,
        }
    return {}


@df.workflow
async def bad_wf_returns_set(ctx: df.WorkflowContext) -> set[int]:
    return {1, 2}


_counts: dict[str, int] = {}
_counts_lock = threading.Lock()


def _count(key: str) -> None:
    with _counts_lock:
        _counts[key] = _counts.get(key, 0) + 1


# -- helpers --------------------------------------------------------------------------------------


def start_keeper(client: df.Client, workflow_id: str = "bad-keeper") -> df.WorkflowHandle:
    handle = client.start(bad_keeper, workflow_id, workflow_id=workflow_id)
    handle.signal("item", "before")
    assert ["before"] == handle.query("items")
    return handle


def assert_keeper_intact(handle: df.WorkflowHandle) -> None:
    """The keeper still has what it had, still takes signals, and completes with all of them."""
    assert ["before"] == handle.query("items")
    handle.signal("item", "after")
    handle.signal("stop")
    assert {"label": handle.workflow_id, "items": ["before", "after"]} == handle.result(timeout=30)


def nested_list(depth: int) -> Any:
    """A string inside ``depth`` lists."""
    nested: Any = "leaf"
    for _ in range(depth):
        nested = [nested]
    return nested


def files_under(root: Path) -> set[str]:
    return {
        str(Path(dirpath, name).relative_to(root))
        for dirpath, _, names in os.walk(root)
        for name in names
    }


# -- unknown workflow types ---------------------------------------------------------------------


def test_unknown_workflow_type_by_name(client: df.Client) -> None:
    keeper = start_keeper(client)

    with pytest.raises(df.UnknownWorkflowType) as caught:
        client.start("bad_no_such_type", workflow_id="bad-unknown-type")

    assert "'bad_no_such_type'" in str(caught.value)
    assert "no @workflow of that name" in str(caught.value)
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle("bad-unknown-type").describe()
    assert_keeper_intact(keeper)


def test_undecorated_function_is_not_a_workflow(client: df.Client) -> None:
    keeper = start_keeper(client)

    with pytest.raises(df.UnknownWorkflowType) as caught:
        client.start(bad_not_a_workflow, workflow_id="bad-undecorated")

    assert "bad_not_a_workflow" in str(caught.value)
    assert "decorate it with @workflow" in str(caught.value)
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle("bad-undecorated").describe()
    assert_keeper_intact(keeper)


def test_sync_function_cannot_be_a_workflow(client: df.Client) -> None:
    def bad_sync_body(ctx: df.WorkflowContext) -> None:
        return None

    with pytest.raises(TypeError, match="needs an 'async def' function") as caught:
        df.workflow(bad_sync_body)

    assert "bad_sync_body" in str(caught.value)
    with pytest.raises(df.UnknownWorkflowType):  # refused, so never registered
        client.start("bad_sync_body", workflow_id="bad-sync-body")


def test_child_of_unknown_type_raises_in_the_parent(client: df.Client) -> None:
    result = client.execute(bad_wf_child_of_unknown_type, workflow_id="bad-parent", timeout=30)

    assert result.startswith("caught: unknown workflow type 'bad_no_such_child_type'")


# -- unknown and closed workflow IDs -----------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda h: h.result(timeout=5), id="result"),
        pytest.param(lambda h: h.describe(), id="describe"),
        pytest.param(lambda h: h.signal("item", 1), id="signal"),
        pytest.param(lambda h: h.query("items"), id="query"),
        pytest.param(lambda h: h.cancel(), id="cancel"),
        pytest.param(lambda h: h.terminate("why"), id="terminate"),
    ],
)
def test_unknown_workflow_id(client: df.Client, call: Any) -> None:
    keeper = start_keeper(client)

    with pytest.raises(df.WorkflowNotFound) as caught:
        call(client.get_handle("bad-nobody-home"))

    assert "'bad-nobody-home'" in str(caught.value)
    assert_keeper_intact(keeper)


def test_unknown_run_id_of_a_known_workflow(client: df.Client) -> None:
    handle = client.start(bad_echo, 1, workflow_id="bad-known")
    assert 1 == handle.result(timeout=30)

    with pytest.raises(df.WorkflowNotFound) as caught:
        client.get_handle("bad-known", run_id="0" * 32).describe()

    assert "'bad-known'" in str(caught.value)
    assert "0" * 32 in str(caught.value)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda h: h.signal("item", 1), id="signal"),
        pytest.param(lambda h: h.query("items"), id="query"),
        pytest.param(lambda h: h.cancel(), id="cancel"),
        pytest.param(lambda h: h.terminate(), id="terminate"),
    ],
)
def test_closed_workflow_refuses_signal_query_cancel(client: df.Client, call: Any) -> None:
    handle = client.start(bad_echo, {"kept": True}, workflow_id="bad-closed")
    assert {"kept": True} == handle.result(timeout=30)
    length = handle.describe().history_length

    with pytest.raises(df.WorkflowClosed) as caught:
        call(client.get_handle("bad-closed"))

    message = str(caught.value)
    assert "'bad-closed'" in message
    assert f"run {handle.run_id} already completed" in message
    assert {"kept": True} == handle.result(timeout=30)
    description = handle.describe()
    assert ("completed", length) == (description.status, description.history_length)


# -- queries ------------------------------------------------------------------------------------


# In-process only. Ray path: UnknownQuery naming the known queries, through Ray: test_ray_core's
# test_bad_input_errors_arrive_with_their_duraflow_class.
@pytest.mark.parametrize("runtime", ["local"])
def test_unknown_query_names_the_known_ones(any_client: df.Client) -> None:
    keeper = start_keeper(any_client)

    with pytest.raises(df.UnknownQuery) as caught:
        keeper.query("nope")

    message = str(caught.value)
    assert "'nope'" in message
    assert "['fails', 'items', 'label', 'unencodable']" in message
    assert_keeper_intact(keeper)


def test_query_handler_that_raises(client: df.Client) -> None:
    keeper = start_keeper(client)

    with pytest.raises(df.QueryFailed) as caught:
        keeper.query("fails")

    message = str(caught.value)
    assert "'fails'" in message
    assert "ZeroDivisionError: division by zero" in message
    assert_keeper_intact(keeper)


# In-process only. Ray path: PayloadError raised in the partition actor for a query result:
# test_ray_core's test_bad_input_errors_arrive_with_their_duraflow_class.
@pytest.mark.parametrize("runtime", ["local"])
def test_query_result_that_cannot_be_encoded(any_client: df.Client) -> None:
    keeper = start_keeper(any_client)

    with pytest.raises(df.PayloadError) as caught:
        keeper.query("unencodable")

    message = str(caught.value)
    assert "result of query 'unencodable'" in message
    assert "object" in message
    assert_keeper_intact(keeper)


def test_query_handler_with_wrong_arguments(client: df.Client) -> None:
    keeper = start_keeper(client)

    with pytest.raises(df.QueryFailed) as caught:
        keeper.query("items", "unexpected argument")

    assert "TypeError" in str(caught.value)
    assert_keeper_intact(keeper)


# -- payloads msgspec cannot encode ------------------------------------------------------------


def test_unencodable_start_argument(client: df.Client) -> None:
    keeper = start_keeper(client)

    with pytest.raises(df.PayloadError) as caught:
        client.start(bad_echo, object(), workflow_id="bad-payload-start")

    message = str(caught.value)
    assert "argument 'value' of workflow 'bad_echo'" in message
    assert "object" in message
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle("bad-payload-start").describe()
    assert_keeper_intact(keeper)


def test_unencodable_signal_payload(client: df.Client) -> None:
    keeper = start_keeper(client)
    length = keeper.describe().history_length

    with pytest.raises(df.PayloadError) as caught:
        keeper.signal("item", {"when": object()})

    message = str(caught.value)
    assert "payload of signal 'item'" in message
    assert "object" in message
    assert length == keeper.describe().history_length  # nothing was appended
    assert_keeper_intact(keeper)


def test_unencodable_query_argument(client: df.Client) -> None:
    keeper = start_keeper(client)

    with pytest.raises(df.PayloadError) as caught:
        keeper.query("items", object())

    assert "arguments of query 'items'" in str(caught.value)
    assert_keeper_intact(keeper)


def test_workflow_returning_unencodable_value_fails_with_payload_error(client: df.Client) -> None:
    handle = client.start(bad_returns_object, workflow_id="bad-returns-object")

    with pytest.raises(df.WorkflowFailedError) as caught:
        handle.result(timeout=30)

    error = caught.value
    assert ("failed", "PayloadError") == (error.status, error.cause_type)
    assert "result of workflow 'bad_returns_object'" in error.cause_message
    assert "object" in error.cause_message


def test_activity_returning_unencodable_value_fails_without_retries(client: df.Client) -> None:
    # Its policy allows 5 attempts, but an unencodable result is the same on every attempt.
    result = client.execute(
        bad_wf_activity_returns_object, workflow_id="bad-act-returns-object", timeout=30
    )

    assert ("PayloadError", 1) == (result["cause_type"], result["attempts"])
    assert "result of activity 'bad_act_returns_object'" in result["cause_message"]
    assert 1 == _counts["bad_act_returns_object"]


def test_unencodable_activity_argument_raises_in_the_workflow(client: df.Client) -> None:
    result = client.execute(
        bad_wf_activity_object_argument, workflow_id="bad-act-object-arg", timeout=30
    )

    assert result.startswith("caught: cannot encode argument 'value' of activity 'bad_act_echo'")


def test_text_that_is_not_valid_utf8_is_a_payload_error(client: df.Client) -> None:
    # os.fsdecode() of non-UTF-8 bytes gives lone surrogates; msgpack (and SQLite) cannot hold them
    keeper = start_keeper(client)

    with pytest.raises(df.PayloadError) as on_start:
        client.start(bad_echo, os.fsdecode(b"file-\xff"), workflow_id="bad-surrogate-arg")
    with pytest.raises(df.PayloadError) as on_signal:
        keeper.signal("item", {"path": os.fsdecode(b"\xfe")})

    assert "argument 'value' of workflow 'bad_echo'" in str(on_start.value)
    assert "payload of signal 'item'" in str(on_signal.value)
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle("bad-surrogate-arg").describe()
    assert_keeper_intact(keeper)


def test_activity_returning_text_that_is_not_valid_utf8_fails_without_retries(
    client: df.Client,
) -> None:
    result = client.execute(bad_wf_activity_returns_surrogate, workflow_id="bad-sur", timeout=30)

    assert ("PayloadError", 1) == (result["cause_type"], result["attempts"])
    assert "result of activity 'bad_act_returns_surrogate'" in result["cause_message"]


@pytest.mark.parametrize("depth", [129, 500, 100_000])
def test_deeply_nested_payload_is_refused(client: df.Client, depth: int) -> None:
    # 100,000 levels once raised a raw RecursionError (from the error message's repr)
    keeper = start_keeper(client)
    length = keeper.describe().history_length
    nested = nested_list(depth)

    with pytest.raises(df.PayloadError) as on_start:
        client.start(bad_echo, nested, workflow_id="bad-deep")
    with pytest.raises(df.PayloadError) as on_signal:
        keeper.signal("item", nested)

    assert (
        "cannot encode argument 'value' of workflow 'bad_echo': nested deeper than 128 levels"
        == str(on_start.value)
    )
    assert "cannot encode payload of signal 'item': nested deeper than 128 levels" == str(
        on_signal.value
    )
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle("bad-deep").describe()
    assert length == keeper.describe().history_length
    assert_keeper_intact(keeper)


def test_payload_at_the_depth_limit_round_trips(client: df.Client) -> None:
    nested = nested_list(128)

    assert nested == client.execute(bad_echo, nested, workflow_id="bad-deep-128", timeout=30)


def test_activity_returning_a_deeply_nested_value_fails_without_retries(
    client: df.Client,
) -> None:
    result = client.execute(
        bad_wf_activity_mistakes, "deep", workflow_id="bad-deep-act", timeout=30
    )

    assert {
        "caught": "ActivityError",
        "cause_type": "PayloadError",
        "message": "cannot encode result of activity 'bad_act_returns': nested deeper than 128 "
        "levels",
        "attempts": 1,
    } == result
    assert 1 == _counts["bad_act_returns deep"]


# -- payloads that would change type on the way -----------------------------------------------


@pytest.mark.parametrize(
    ("value", "change"),
    [
        pytest.param({1, 2}, "a set would arrive as a list", id="set"),
        pytest.param(frozenset({1}), "a frozenset would arrive as a list", id="frozenset"),
        pytest.param(
            dt.datetime(2027, 1, 2, 3, 4), "a naive datetime would arrive as a str", id="datetime"
        ),
        pytest.param(dt.date(2027, 1, 2), "a date would arrive as a str", id="date"),
        pytest.param(dt.time(3, 4), "a time would arrive as a str", id="time"),
        pytest.param(dt.timedelta(hours=1), "a timedelta would arrive as a str", id="timedelta"),
        pytest.param(uuid.UUID(int=7), "a UUID would arrive as a str", id="uuid"),
        pytest.param(decimal.Decimal("9.90"), "a Decimal would arrive as a str", id="decimal"),
        pytest.param({"at": {"when": {1}}}, "a set would arrive as a list", id="set-inside"),
    ],
)
def test_values_that_would_change_type_are_refused_where_nothing_declares_a_type(
    client: df.Client, value: Any, change: str
) -> None:
    # bad_echo's parameter is annotated Any and signals carry no type: these values would arrive
    # as lists or strings, silently.
    keeper = start_keeper(client)
    length = keeper.describe().history_length

    with pytest.raises(df.PayloadError) as on_start:
        client.start(bad_echo, value, workflow_id="bad-changes")
    with pytest.raises(df.PayloadError) as on_signal:
        keeper.signal("item", value)

    assert str(on_start.value).startswith(
        f"cannot encode argument 'value' of workflow 'bad_echo': {change}: convert it, or "
        "declare its type with an annotation on the workflow or activity parameter"
    )
    assert str(on_signal.value).startswith(f"cannot encode payload of signal 'item': {change}")
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle("bad-changes").describe()
    assert length == keeper.describe().history_length
    assert_keeper_intact(keeper)


def test_argument_its_annotation_refuses_names_the_parameter(client: df.Client) -> None:
    with pytest.raises(df.PayloadError) as caught:
        client.start(bad_wf_counts, "five", workflow_id="bad-counts")

    assert (
        "argument 'count' of workflow 'bad_wf_counts' does not match its annotation int: "
        "Expected `int`, got `str`"
    ) == str(caught.value)
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle("bad-counts").describe()


def test_activity_argument_its_annotation_refuses_raises_in_the_workflow(
    client: df.Client,
) -> None:
    result = client.execute(
        bad_wf_activity_mistakes, "argument", workflow_id="bad-act-arg-type", timeout=30
    )

    assert {
        "caught": "PayloadError",
        "message": "argument 'count' of activity 'bad_act_counts' does not match its annotation "
        "int: Expected `int`, got `str`",
    } == result


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        pytest.param(
            "annotated result",
            "result of activity 'bad_act_says_int' does not match its annotation int: "
            "Expected `int`, got `str`",
            id="annotation",
        ),
        pytest.param(
            "set",
            "cannot encode result of activity 'bad_act_returns': a set would arrive as a list",
            id="unannotated-set",
        ),
    ],
)
def test_activity_result_that_would_not_arrive_as_returned_fails_without_retries(
    client: df.Client, mistake: str, message: str
) -> None:
    result = client.execute(bad_wf_activity_mistakes, mistake, timeout=30)

    assert ("ActivityError", "PayloadError", 1) == (
        result["caught"],
        result["cause_type"],
        result["attempts"],
    )
    assert result["message"].startswith(message)


def test_workflow_result_that_would_change_type_fails_the_run(client: df.Client) -> None:
    # A workflow's result is read by clients that may not have its code: it is never typed.
    with pytest.raises(df.WorkflowFailedError) as caught:
        client.execute(bad_wf_returns_set, workflow_id="bad-returns-set", timeout=30)

    assert "PayloadError" == caught.value.cause_type
    assert caught.value.cause_message.startswith(
        "cannot encode result of workflow 'bad_wf_returns_set': a set would arrive as a list"
    )


# -- workflow IDs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workflow_id", "named"),
    [
        pytest.param("", "must not be empty", id="empty"),
        pytest.param("x" * 1001, "1001 bytes; the limit is 1000", id="1001-ascii"),
        pytest.param("é" * 501, "1002 bytes; the limit is 1000", id="501-two-byte-chars"),
        pytest.param("a\x00b", "control character '\\x00'", id="nul"),
        pytest.param("a\nb", "control character '\\n'", id="newline"),
        pytest.param("a\tb", "control character '\\t'", id="tab"),
        pytest.param("a\x1bb", "control character '\\x1b'", id="escape"),
        pytest.param("a\x7fb", "control character '\\x7f'", id="del"),
        pytest.param("a\x85b", "control character '\\x85'", id="c1-next-line"),
        pytest.param("a\ud800b", "lone surrogate '\\ud800'", id="lone-surrogate"),
        pytest.param(42, "must be a str, got int", id="not-a-string"),
    ],
)
def test_invalid_workflow_ids(client: df.Client, workflow_id: Any, named: str) -> None:
    keeper = start_keeper(client)

    with pytest.raises(df.InvalidWorkflowId) as on_start:
        client.start(bad_echo, 1, workflow_id=workflow_id)
    with pytest.raises(df.InvalidWorkflowId) as on_handle:
        client.get_handle(workflow_id)

    assert named in str(on_start.value)
    assert named in str(on_handle.value)
    assert isinstance(on_start.value, ValueError)
    assert_keeper_intact(keeper)


# In-process only. Ray path: InvalidWorkflowId of a child, caught by the parent in a partition
# actor: test_ray_core's test_bad_input_errors_arrive_with_their_duraflow_class.
@pytest.mark.parametrize("runtime", ["local"])
def test_invalid_workflow_id_for_a_child(any_client: df.Client) -> None:
    assert "caught: workflow ID 'a\\x00b' holds control character '\\x00'" == any_client.execute(
        bad_wf_child_bad_id, workflow_id="bad-child-id", timeout=30
    )


ORDINARY_IDS = [
    "../x",
    "../../../../etc/passwd",
    "/absolute/path",
    "a'; DROP TABLE workflows;--",
    'quote " and backslash \\',
    "%s %d {0} ${HOME}",
    "名前 with spaces",
    "emoji 🚀 id",
    "p0000.sqlite",
    "x" * 1000,
    "é" * 500,  # exactly 1,000 bytes
]


def test_odd_but_valid_ids_are_ordinary_data(client: df.Client, data_dir: Path) -> None:
    handles = [client.start(bad_wait_then_echo, wid, workflow_id=wid) for wid in ORDINARY_IDS]
    for handle in handles:
        handle.signal("go")

    assert ORDINARY_IDS == [h.result(timeout=30) for h in handles]
    for wid in ORDINARY_IDS:
        description = client.get_handle(wid).describe()
        assert (wid, "completed") == (description.workflow_id, description.status)
    listed = {d.workflow_id for d in client.list(workflow_type="bad_wait_then_echo")}
    assert set(ORDINARY_IDS) == listed
    # Files are named by partition number, never by workflow ID, and nothing appeared beside
    # the data directory. The archive consumer keeps running meanwhile: a warm segment may be
    # caught while it is written (a random temporary name, renamed when complete).
    engine_file = re.compile(
        r"deployment\.(json|lock)|partitions/p000[01]\.sqlite(-wal|-shm|\.lock)?"
        r"|archive/catalog\.sqlite(-journal|-wal|-shm)?"
        r"|archive/warm/(p\d{5}-\d{20}-\d{20}|\.tmp-[0-9a-f]{32})\.parquet"
        r"|archive/warehouse/duraflow/(history|workflows|activities)/("
        r"metadata/[0-9a-f-]+\.metadata\.json|metadata/(snap-)?[0-9a-f-]+(-m\d+)?\.avro"
        r"|data/(event|close|closed)_date=\d{4}-\d{2}-\d{2}/[0-9a-f-]+\.parquet)"
    )
    assert set() == {f for f in files_under(data_dir) if not engine_file.fullmatch(f)}
    assert {"data"} == set(os.listdir(data_dir.parent))
    # The tables are all still there, in every partition file.
    for index in range(2):
        conn = sqlite3.connect(data_dir / "partitions" / f"p{index:04d}.sqlite")
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            tables = {name for (name,) in rows}
        finally:
            conn.close()
        assert {"workflows", "workflow_history"} <= tables


# -- workflows and activities that fail --------------------------------------------------------


# In-process only. Ray path: WorkflowFailedError with the cause's type and message through Ray:
# test_ray_core's test_bad_input_errors_arrive_with_their_duraflow_class.
@pytest.mark.parametrize("runtime", ["local"])
def test_workflow_that_raises(any_client: df.Client) -> None:
    handle = any_client.start(bad_raises, "order 7 is invalid", workflow_id="bad-raises")

    with pytest.raises(df.WorkflowFailedError) as caught:
        handle.result(timeout=30)

    error = caught.value
    assert ("bad-raises", handle.run_id, "failed", "ValueError", "order 7 is invalid") == (
        error.workflow_id,
        error.run_id,
        error.status,
        error.cause_type,
        error.cause_message,
    )
    assert "ValueError: order 7 is invalid" in str(error)
    description = handle.describe()
    assert ("failed", "ValueError", "order 7 is invalid") == (
        description.status,
        description.error_type,
        description.error_message,
    )
    # a closed run answers result() again with the same failure
    with pytest.raises(df.WorkflowFailedError):
        any_client.get_handle("bad-raises").result(timeout=30)


def test_workflow_that_raises_a_custom_error(client: df.Client) -> None:
    with pytest.raises(df.WorkflowFailedError) as caught:
        client.execute(bad_raises_custom, workflow_id="bad-raises-custom", timeout=30)

    assert ("BadOrderError", "order 7 has no items") == (
        caught.value.cause_type,
        caught.value.cause_message,
    )


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_activity_that_never_returns_times_out(client: df.Client, sync: bool) -> None:
    keeper = start_keeper(client)

    with pytest.raises(df.WorkflowFailedError) as caught:
        client.execute(bad_wf_never_returns, sync, workflow_id=f"bad-never-{sync}", timeout=30)

    error = caught.value
    assert "ActivityError" == error.cause_type
    assert "TimeoutError: start_to_close_timeout of 0.1s elapsed" in error.cause_message
    assert_keeper_intact(keeper)
    if sync:
        # the abandoned sync attempt learns it is no longer wanted on its next heartbeat
        deadline = time.monotonic() + 5
        while not _counts.get("bad_act_sync_never_returns cancelled"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert 1 <= _counts.get("bad_act_sync_never_returns cancelled", 0)


def test_error_messages_that_are_not_valid_utf8_are_recorded_escaped(client: df.Client) -> None:
    # An OSError about a non-UTF-8 file name carries a lone surrogate in its message; the
    # failure must still be recorded (escaped), not fail the partition's turn over and over.
    keeper = start_keeper(client)

    caught_in_workflow = client.execute(
        bad_wf_undecodable_error, True, workflow_id="bad-undecodable-1", timeout=30
    )
    with pytest.raises(df.WorkflowFailedError) as failed:
        client.execute(bad_wf_undecodable_error, False, workflow_id="bad-undecodable-2", timeout=30)

    assert ("FileNotFoundError", 2) == (
        caught_in_workflow["cause_type"],
        caught_in_workflow["attempts"],
    )
    assert "\\udcff.txt" in caught_in_workflow["cause_message"]
    assert ("RuntimeError", "giving up on \\udcff") == (
        failed.value.cause_type,
        failed.value.cause_message,
    )
    assert_keeper_intact(keeper)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        pytest.param(lambda h: h.signal(123, "x"), "signal name must be a str, got int", id="int"),
        pytest.param(
            lambda h: h.signal("item\ud800", "x"), "signal name 'item\\ud800'", id="sig-surrogate"
        ),
        pytest.param(lambda h: h.cancel(123), "cancel reason must be a str", id="cancel-int"),
        pytest.param(
            lambda h: h.cancel(os.fsdecode(b"\xff")), "cancel reason '\\udcff'", id="cancel-sur"
        ),
        pytest.param(
            lambda h: h.terminate(object()), "terminate reason must be a str", id="terminate-obj"
        ),
    ],
)
def test_bad_signal_names_and_reasons_never_reach_history(
    data_dir: Path, call: Any, named: str
) -> None:
    # Its own engine, so the test can reopen the data directory: the keeper's history must
    # still replay after the refused call (a non-str name in history would not decode).
    with df.Engine(data_dir, runtime="local", partitions=2, synchronous="NORMAL") as engine:
        keeper = start_keeper(engine.client())
        length = keeper.describe().history_length

        with pytest.raises(df.PayloadError) as caught:
            call(keeper)

        assert named in str(caught.value)
        assert length == keeper.describe().history_length
    with df.Engine(data_dir, runtime="local", partitions=2, synchronous="NORMAL") as engine:
        assert_keeper_intact(engine.client().get_handle("bad-keeper"))


def test_non_activity_passed_to_ctx_activity_is_catchable(client: df.Client) -> None:
    result = client.execute(bad_wf_calls_non_activity, True, workflow_id="bad-nonact-1", timeout=30)

    assert result.startswith("caught: ")
    assert "bad_not_an_activity" in result
    assert "decorate it with @duraflow.activity" in result


def test_non_activity_passed_to_ctx_activity_fails_the_workflow(client: df.Client) -> None:
    with pytest.raises(df.WorkflowFailedError) as caught:
        client.execute(bad_wf_calls_non_activity, False, workflow_id="bad-nonact-2", timeout=30)

    assert "NotAnActivityError" == caught.value.cause_type
    assert "bad_not_an_activity" in caught.value.cause_message


# -- starting an ID twice -------------------------------------------------------------------------


def test_starting_a_running_id_fails_and_a_closed_id_starts_a_new_run(client: df.Client) -> None:
    first = client.start(bad_wait_then_echo, "first", workflow_id="bad-twice")

    with pytest.raises(df.WorkflowAlreadyRunning) as caught:
        client.start(bad_wait_then_echo, "second", workflow_id="bad-twice")

    assert "'bad-twice'" in str(caught.value)
    assert first.run_id in str(caught.value)
    first.signal("go")
    assert "first" == first.result(timeout=30)

    second = client.start(bad_wait_then_echo, "second", workflow_id="bad-twice")
    assert first.run_id != second.run_id
    second.signal("go")
    assert "second" == second.result(timeout=30)
    # both runs stay readable: by run ID, and the latest by workflow ID alone
    assert "first" == client.get_handle("bad-twice", run_id=first.run_id).result(timeout=30)
    assert "second" == client.get_handle("bad-twice").result(timeout=30)
    assert second.run_id == client.get_handle("bad-twice").describe().run_id


def test_unknown_id_conflict_policy(client: df.Client) -> None:
    with pytest.raises(df.ConfigurationError) as caught:
        client.start(bad_echo, 1, workflow_id="bad-policy", id_conflict="overwrite")

    assert "'overwrite'" in str(caught.value)
    with pytest.raises(df.WorkflowNotFound):
        client.get_handle("bad-policy").describe()


# -- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "named"),
    [
        pytest.param("soon", "'soon' is not a duration", id="word"),
        pytest.param("10 parsecs", "is not a duration", id="unknown-unit"),
        pytest.param("-1s", "'-1s' is not a duration", id="negative-string"),
        pytest.param("", "'' is not a duration", id="empty"),
        pytest.param(-1, "non-negative", id="negative-number"),
        pytest.param(float("nan"), "non-negative", id="nan"),
        pytest.param(float("inf"), "finite", id="inf"),
        pytest.param(1e300, "at most 100 years (3155760000 s), got 1e+300", id="1e300"),
        pytest.param("36525d1s", "at most 100 years", id="100-years-and-a-second"),
        pytest.param(True, "got True", id="bool"),
        pytest.param([1], "got [1]", id="list"),
    ],
)
def test_invalid_durations_are_refused_everywhere(value: Any, named: str) -> None:
    with pytest.raises(df.InvalidDuration, match="initial_interval") as on_policy:
        df.RetryPolicy(initial_interval=value)
    with pytest.raises(df.InvalidDuration) as on_decorator:

        @df.activity(start_to_close_timeout=value)
        def bad_act_never_registered() -> None:
            pass

    assert named in str(on_policy.value)
    assert named in str(on_decorator.value)
    assert "start_to_close_timeout" in str(on_decorator.value)


def test_invalid_retry_numbers() -> None:
    # more cases, field by field: tests/engine/test_retry_policy.py
    with pytest.raises(
        df.ConfigurationError, match=r"backoff_coefficient must be a finite number >= 1, got 0\.5"
    ):
        df.RetryPolicy(backoff_coefficient=0.5)
    with pytest.raises(
        df.ConfigurationError,
        match=r"maximum_attempts must be from 0 \(unlimited\) to 2147483647, got -1",
    ):
        df.RetryPolicy(maximum_attempts=-1)


def test_invalid_duration_in_workflow_code_fails_the_workflow(client: df.Client) -> None:
    keeper = start_keeper(client)

    with pytest.raises(df.WorkflowFailedError) as caught:
        client.execute(bad_wf_sleep, "a while", workflow_id="bad-sleep", timeout=30)

    assert "InvalidDuration" == caught.value.cause_type
    assert "sleep duration 'a while' is not a duration" in caught.value.cause_message
    assert_keeper_intact(keeper)


def test_invalid_activity_timeout_in_workflow_code_is_catchable(client: df.Client) -> None:
    result = client.execute(
        bad_wf_activity_duration, "1 fortnight", workflow_id="bad-dur", timeout=30
    )

    assert result.startswith("caught: ")
    assert "'1 fortnight' is not a duration" in result


def test_invalid_result_timeout(client: df.Client) -> None:
    keeper = start_keeper(client)

    with warnings.catch_warnings(record=True) as seen_warnings:
        warnings.simplefilter("always")
        with pytest.raises(df.InvalidDuration) as caught:
            keeper.result(timeout="whenever")
        message = str(caught.value)
        del caught  # its traceback holds the frames of the failed call
        gc.collect()

    assert "'whenever'" in message
    # the refused call left no half-made request behind ("coroutine ... was never awaited")
    assert [] == [str(w.message) for w in seen_warnings if "never awaited" in str(w.message)]
    assert_keeper_intact(keeper)


# -- result timeouts ------------------------------------------------------------------------------


def test_result_timeout_on_a_parked_workflow_leaves_it_running(client: df.Client) -> None:
    keeper = start_keeper(client)

    with pytest.raises(df.ResultTimeout) as caught:
        keeper.result(timeout=0.2)

    assert isinstance(caught.value, TimeoutError)
    assert "'bad-keeper' did not close within 0.2s" in str(caught.value)
    assert "running" == keeper.describe().status
    assert_keeper_intact(keeper)
