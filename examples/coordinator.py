"""A parent coordinating children that signal back (DESIGN.md section 5).

A nightly report starts one child per region. Each child asks the parent for the report's
cutoff (``ctx.query_parent``), counts its rows, and reports back (``ctx.signal_parent``),
which the parent takes with a signal handler. Once every region has reported
(``ctx.wait_condition``) the parent waits for an auditor's approval, tells each child to
publish (a child handle's ``signal``) and waits for all of them to close
(``ctx.block_until``). The auditor is a workflow started separately: it asks the report how
far it got until every region is counted, then approves it
(``ctx.external_workflow(...).query`` and ``.signal``).

Run it with ``./dev example coordinator`` (or ``python examples/coordinator.py``). The
workflows live on four partitions, so most of these messages cross from one to another
through the partitions' outboxes: each is durable, delivered once, and in order per sender.
"""

from __future__ import annotations

import time

import duraflow as df

REGIONS = ["emea", "apac", "amer"]
ROWS = {"emea": 1200, "apac": 800, "amer": 1500}


@df.activity
def count_rows(region: str, cutoff: str) -> int:
    return ROWS[region]  # a warehouse query up to the cutoff, in real life


@df.activity
def publish(region: str, rows: int) -> str:
    return f"s3://reports/{region}.parquet ({rows} rows)"


@df.workflow
async def region_report(ctx: df.WorkflowContext, region: str) -> str:
    cutoff = await ctx.query_parent("cutoff")
    rows = await ctx.activity(count_rows, region, cutoff)
    await ctx.signal_parent("counted", {"region": region, "rows": rows})
    await ctx.wait_for_signal("publish")
    return await ctx.activity(publish, region, rows)


@df.workflow
async def nightly_report(ctx: df.WorkflowContext, day: str) -> dict:
    counted: dict[str, int] = {}
    ctx.set_query_handler("cutoff", lambda: f"{day}T00:00:00Z")
    ctx.set_query_handler("progress", lambda: f"{len(counted)}/{len(REGIONS)} regions counted")
    ctx.set_signal_handler("counted", lambda msg: counted.update({msg["region"]: msg["rows"]}))
    children = [
        await ctx.start_child(region_report, region, workflow_id=f"report-{day}-{region}")
        for region in REGIONS
    ]
    await ctx.wait_condition(lambda: len(counted) == len(REGIONS), timeout="1h")
    approved_by = await ctx.wait_for_signal("approve", timeout="1h")
    for child in children:
        await child.signal("publish")
    closed = await ctx.block_until([c.workflow_id for c in children], timeout="1h")
    published = [await child.result() for child in children]
    return {
        "rows": sum(counted.values()),
        "approved_by": approved_by,
        "closed": closed,
        "published": published,
    }


@df.workflow
async def auditor(ctx: df.WorkflowContext, report_id: str) -> str:
    report = ctx.external_workflow(report_id)
    while (progress := await report.query("progress")) != "3/3 regions counted":
        await ctx.sleep(0.1)  # a durable timer: the auditor may wait for days
    await report.signal("approve", "auditor")
    return progress


def main() -> None:
    started = time.perf_counter()
    with df.Engine(".duraflow-coordinator", runtime="local", partitions=4) as engine:
        client = engine.client()
        fresh = "terminate_existing"  # re-running the example starts afresh
        report = client.start(
            nightly_report, "2026-01-05", workflow_id="report-2026-01-05", id_conflict=fresh
        )
        audit = client.start(
            auditor, report.workflow_id, workflow_id="audit-2026-01-05", id_conflict=fresh
        )
        print(f"audit     {audit.result(timeout=60)}")
        result = report.result(timeout=60)
        print(f"rows      {result['rows']}, approved by {result['approved_by']}")
        for workflow_id, status in sorted(result["closed"].items()):
            print(f"closed    {workflow_id}: {status}")
        for line in result["published"]:
            print(f"published {line}")
    print(f"done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
