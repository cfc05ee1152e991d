"""The app served by tests/test_cli.py: ``duraflow serve --app tests.cli_app`` imports it in
every partition actor, so the actors find this code without any client."""

from __future__ import annotations

import os

import duraflow as df


@df.activity
def cli_shout(text: str) -> dict[str, object]:
    """Runs as a Ray task of the detached partition actor."""
    return {"text": text.upper(), "pid": os.getpid()}


def _not_empty(new: str) -> None:
    if not new:
        raise ValueError("a name cannot be empty")


@df.workflow
async def cli_greet(ctx: df.WorkflowContext, name: str) -> dict[str, object]:
    """Parks until the signal ``go`` arrives, then greets through an activity."""
    ctx.set_query_handler("name", lambda: name)
    ctx.set_update_handler("rename", lambda new: f"{name} -> {new}", validator=_not_empty)
    how = await ctx.wait_for_signal("go")
    shouted = await ctx.activity(cli_shout, f"{how} {name}")
    return {"greeting": shouted["text"], "activity_pid": shouted["pid"]}
