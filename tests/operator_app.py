"""The app served by tests/test_operator_cli.py: ``duraflow.serving.serve`` with
``app_modules=["tests.operator_app"]`` imports it in every partition actor; the driver that
starts these workflows by type name never imports it."""

from __future__ import annotations

import os

import duraflow as df


@df.activity(retry=df.RetryPolicy(maximum_attempts=1))
def op_app_check(fixed_path: str, item: str) -> str:
    """Fails until the file ``fixed_path`` exists (the fix is deployed)."""
    if not os.path.exists(fixed_path):
        raise RuntimeError(f"cannot ship {item} yet")
    return f"shipped {item}"


@df.workflow
async def op_app_order(ctx: df.WorkflowContext, order: dict[str, object]) -> dict[str, object]:
    """Answers the query ``stage``; waits for ``go``; ships through an activity."""
    stage = {"now": "waiting"}
    ctx.set_query_handler("stage", lambda: stage["now"])
    await ctx.wait_for_signal("go")
    stage["now"] = "shipping"
    shipped = await ctx.activity(op_app_check, str(order["fixed"]), str(order["id"]))
    return {"id": order["id"], "shipped": shipped}
