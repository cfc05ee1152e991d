"""Code evolution: ``ctx.patched`` / ``ctx.deprecate_patch`` let running workflows keep
replaying when their code changes (Temporal's semantics), checked by replaying recorded
histories against each version of the code; and the code hash recorded in
``workflow.started`` shows in ``describe()`` once the code changed.
"""

from __future__ import annotations

from typing import Any

import pytest

import duraflow as df
from duraflow.cdc import events as ev
from duraflow.engine import definitions
from duraflow.testing import Replayer

WAIT_S = 20.0


@df.activity
def pt_old_rounding(total: float) -> int:
    return int(total)


@df.activity
def pt_new_rounding(total: float) -> float:
    return round(total, 2)


@df.workflow
async def pt_bill(ctx: df.WorkflowContext, total: float) -> Any:
    """Version 1, before the fix."""
    return await ctx.activity(pt_old_rounding, total)


async def pt_bill_v2(ctx: df.WorkflowContext, total: float) -> Any:
    """Version 2: the fix behind a patch; histories of version 1 take the old path."""
    if ctx.patched("fix-rounding"):
        return await ctx.activity(pt_new_rounding, total)
    return await ctx.activity(pt_old_rounding, total)


async def pt_bill_v3(ctx: df.WorkflowContext, total: float) -> Any:
    """Version 3: every open run took the patch; the old path is gone."""
    ctx.deprecate_patch("fix-rounding")
    return await ctx.activity(pt_new_rounding, total)


async def pt_bill_v4(ctx: df.WorkflowContext, total: float) -> Any:
    """Version 4: the patch call itself removed."""
    return await ctx.activity(pt_new_rounding, total)


async def pt_bill_unpatched_fix(ctx: df.WorkflowContext, total: float) -> Any:
    """The fix without a patch: breaks every history recorded by version 1."""
    return await ctx.activity(pt_new_rounding, total)


def run_as(client: df.Client, fn: Any, workflow_id: str) -> list[ev.AnyEvent]:
    """Run ``fn`` as the ``pt_bill`` type (the registry is by name) and return its history."""
    original = definitions.workflow_definition("pt_bill")
    df.workflow(name="pt_bill")(fn)
    try:
        handle = client.start("pt_bill", 2.718, workflow_id=workflow_id)
        expected = 2 if fn is pt_bill else 2.72
        assert expected == handle.result(timeout=WAIT_S)
        return handle.history()
    finally:
        df.workflow(name="pt_bill")(original.fn)


def replay(fn: Any, history: list[ev.AnyEvent]) -> int:
    return Replayer(workflows={"pt_bill": fn}).replay(history)


def test_patched_keeps_old_histories_replaying_and_new_runs_take_the_new_path(
    client: df.Client,
) -> None:
    v1_history = run_as(client, pt_bill, "pt-v1")
    assert not any(isinstance(e, ev.PatchMarker) for e in v1_history)
    with pytest.raises(df.NonDeterminismError, match="pt_old_rounding"):
        replay(pt_bill_unpatched_fix, v1_history)  # why patching is needed
    assert 1 == replay(pt_bill_v2, v1_history)  # patched() is False there: the old path

    v2_history = run_as(client, pt_bill_v2, "pt-v2")
    (marker,) = [e for e in v2_history if isinstance(e, ev.PatchMarker)]
    assert ("fix-rounding", False) == (marker.patch_id, marker.deprecated)
    assert 1 == replay(pt_bill_v2, v2_history)
    assert 1 == replay(pt_bill_v3, v2_history)  # deprecate_patch accepts the marker
    with pytest.raises(df.NonDeterminismError, match="patched 'fix-rounding'"):
        replay(pt_bill_v4, v2_history)  # removed too early: a v2 marker is still there

    v3_history = run_as(client, pt_bill_v3, "pt-v3")
    (marker,) = [e for e in v3_history if isinstance(e, ev.PatchMarker)]
    assert marker.deprecated
    assert 1 == replay(pt_bill_v2, v3_history)  # old workers still replay new runs
    assert 1 == replay(pt_bill_v3, v3_history)
    assert 1 == replay(pt_bill_v4, v3_history)  # a deprecated marker may go unmatched


def test_patched_answers_the_same_all_run_long_and_checks_its_id(client: df.Client) -> None:
    @df.workflow
    async def pt_twice(ctx: df.WorkflowContext) -> list[bool]:
        return [ctx.patched("p"), ctx.patched("p"), ctx.patched("q")]

    handle = client.start(pt_twice, workflow_id="pt-twice")
    assert [True, True, True] == handle.result(timeout=WAIT_S)
    markers = [e.patch_id for e in handle.history() if isinstance(e, ev.PatchMarker)]
    assert ["p", "q"] == markers

    @df.workflow
    async def pt_bad_id(ctx: df.WorkflowContext) -> bool:
        return ctx.patched("")

    with pytest.raises(df.WorkflowFailedError, match="patch ID must be a non-empty str"):
        client.execute(pt_bad_id, workflow_id="pt-bad", timeout=WAIT_S)


def test_describe_shows_the_recorded_code_hash_and_when_the_code_changed(
    client: df.Client,
) -> None:
    @df.workflow(name="pt_evolving")
    async def first(ctx: df.WorkflowContext) -> str:
        return str(await ctx.wait_for_signal("go"))

    handle = client.start("pt_evolving", workflow_id="pt-hash")
    started = handle.history()[0]
    assert isinstance(started, ev.WorkflowStarted)
    recorded = definitions.workflow_definition(first).code_hash
    assert recorded == started.code_hash
    described = handle.describe()
    assert (recorded, recorded, False) == (
        described.code_hash,
        described.current_code_hash,
        described.code_changed,
    )

    @df.workflow(name="pt_evolving")
    async def second(ctx: df.WorkflowContext) -> str:
        return "changed: " + str(await ctx.wait_for_signal("go"))

    changed = definitions.workflow_definition(second).code_hash
    assert changed != recorded
    described = handle.describe()
    assert (recorded, changed, True) == (
        described.code_hash,
        described.current_code_hash,
        described.code_changed,
    )


def test_the_code_hash_sees_changed_constants_and_nested_functions() -> None:
    async def a(ctx: Any) -> Any:
        return round(1.5, 2)

    async def b(ctx: Any) -> Any:
        return round(1.5, 3)

    async def c(ctx: Any) -> Any:
        return (lambda: 1)()

    async def d(ctx: Any) -> Any:
        return (lambda: 2)()

    hashes = {definitions._code_hash(f) for f in (a, b, c, d)}
    assert 4 == len(hashes)
    assert definitions._code_hash(a) == definitions._code_hash(a)
